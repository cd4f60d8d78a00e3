//! Extracting the sender domains from send bodies, measured with criterion.
//!
//! `cargo bench -p scopegate-suite --bench sender`.
//! - `sender/single_1k`: one realistic message of about 1 KiB for `/email`
//!   (From with a display name, To, Subject, HtmlBody, TextBody,
//!   MessageStream).
//! - `sender/batch_500`: 500 such messages as a JSON array for
//!   `/email/batch`.
//! - `sender/attachment_5m`: one message with a 5 MiB base64 attachment
//!   before the From: the cost of skipping what is not needed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scopegate_config::{Messages, SenderSpec};
use scopegate_gateway::sender::sender_domains;

fn message(i: usize) -> serde_json::Value {
    serde_json::json!({
        "From": format!("\"Billing, Team {i}\" <billing+{i}@Staging.Example.com>"),
        "To": format!("customer{i}@customer-domain.example.org"),
        "Cc": "accounts@customer-domain.example.org",
        "Subject": format!("Your invoice #{i:06} for November is ready"),
        "Tag": "invoice",
        "HtmlBody": format!(
            "<html><body><h1>Invoice #{i:06}</h1><p>Hello,</p><p>Your invoice for \
             November is attached. The total due is <b>$1,234.56</b>, payable by \
             December 15th. You can also view it online at \
             <a href=\"https://app.example.com/invoices/{i}\">your account</a>.</p>\
             <p>Thank you for your business.</p><p>&mdash; The Billing Team</p>\
             </body></html>"
        ),
        "TextBody": format!(
            "Invoice #{i:06}\n\nHello,\n\nYour invoice for November is attached. The \
             total due is $1,234.56, payable by December 15th. You can also view it \
             online at https://app.example.com/invoices/{i}\n\nThank you for your \
             business.\n-- The Billing Team"
        ),
        "ReplyTo": "billing@example.com",
        "Headers": [{ "Name": "X-Invoice-Id", "Value": format!("{i}") }],
        "TrackOpens": true,
        "TrackLinks": "HtmlOnly",
        "Metadata": { "customer": format!("cus_{i:08}"), "plan": "pro" },
        "MessageStream": "outbound"
    })
}

fn bench(c: &mut Criterion) {
    let single = SenderSpec {
        sender_pointer: "/From".to_owned(),
        messages: Messages::Single,
    };
    let batch = SenderSpec {
        sender_pointer: "/From".to_owned(),
        messages: Messages::RootArray,
    };

    let one = serde_json::to_vec(&message(1)).unwrap();
    let many = serde_json::to_vec(&(0..500).map(message).collect::<Vec<_>>()).unwrap();
    let mut big = message(2);
    let blob = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw==".repeat(5 * 1024 * 1024 / 48);
    big["Attachments"] = serde_json::json!([{ "Name": "report.pdf", "Content": blob, "ContentType": "application/pdf" }]);
    // serde_json::Map keeps keys sorted: "Attachments" comes before "From".
    let big = serde_json::to_vec(&big).unwrap();

    assert_eq!(
        sender_domains(&one, &single).unwrap(),
        ["staging.example.com"]
    );
    assert_eq!(sender_domains(&many, &batch).unwrap().len(), 500);
    assert_eq!(
        sender_domains(&big, &single).unwrap(),
        ["staging.example.com"]
    );
    eprintln!(
        "body sizes: single {} B, batch {} B, attachment {} B",
        one.len(),
        many.len(),
        big.len()
    );

    let mut g = c.benchmark_group("sender");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_1k", |b| {
        b.iter(|| sender_domains(black_box(&one), &single).unwrap())
    });
    g.throughput(Throughput::Elements(500));
    g.bench_function("batch_500", |b| {
        b.iter(|| sender_domains(black_box(&many), &batch).unwrap())
    });
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("attachment_5m", |b| {
        b.iter(|| sender_domains(black_box(&big), &single).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
