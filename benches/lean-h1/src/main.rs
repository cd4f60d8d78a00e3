//! `lean-h1 LISTEN UPSTREAM`: a minimal HTTP/1.1 keep-alive reverse proxy on
//! one current-thread tokio runtime. Each client connection is a local task;
//! upstream connections are kept in a per-thread stack and reused without
//! any handoff. Requests without a body only; responses framed by
//! Content-Length only. An experiment that bounds what a lean proxy loop
//! costs per request, not a product: no timeouts, no errors beyond closing.

use std::cell::RefCell;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Pool = Rc<RefCell<Vec<TcpStream>>>;

/// The end of the head in `buf`, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

async fn serve(mut client: TcpStream, upstream: std::net::SocketAddr, pool: Pool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut resp = Vec::with_capacity(4096);
    loop {
        // One request head.
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&buf[..end]).map_err(std::io::Error::other)?;
        // Rewrite: the request line, the headers, one added identity header.
        out.clear();
        out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in req.headers.iter() {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"X-Scopegate-Key: k\r\n\r\n");
        buf.drain(..end);
        // An upstream connection from this thread's stack, or a new one.
        let pooled = pool.borrow_mut().pop();
        let mut up = match pooled {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(upstream).await?;
                let _ = s.set_nodelay(true);
                s
            }
        };
        up.write_all(&out).await?;
        // The response: head, then Content-Length bytes.
        resp.clear();
        let (hend, len) = loop {
            let mut chunk = [0u8; 4096];
            let n = up.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            resp.extend_from_slice(&chunk[..n]);
            if let Some(hend) = head_end(&resp) {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut headers);
                r.parse(&resp[..hend]).map_err(std::io::Error::other)?;
                let len = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (hend, len);
            }
        };
        while resp.len() < hend + len {
            let mut chunk = [0u8; 4096];
            let n = up.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            resp.extend_from_slice(&chunk[..n]);
        }
        pool.borrow_mut().push(up);
        client.write_all(&resp[..hend + len]).await?;
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().expect("usage: lean-h1 LISTEN UPSTREAM");
    let upstream: std::net::SocketAddr = args.next().expect("usage: lean-h1 LISTEN UPSTREAM").parse().expect("UPSTREAM: ip:port");
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&listen).await?;
        let pool: Pool = Rc::new(RefCell::new(Vec::new()));
        loop {
            let (client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            tokio::task::spawn_local(serve(client, upstream, Rc::clone(&pool)));
        }
    })
}
