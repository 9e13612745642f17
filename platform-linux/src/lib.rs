//! The Linux shim: real sockets, files and processes around `tandem-core`.
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod join;
pub mod leg;
pub mod nbd_serve;
pub mod pki;
pub mod raftlog;
pub mod render;
pub mod setup;
pub mod statedir;
pub mod token;
pub mod transport;
pub mod volume_io;
pub mod volumes;
