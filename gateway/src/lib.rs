pub use pingora;
pub mod mock;
