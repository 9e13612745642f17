//! The Linux shim: real sockets, files and processes around `tandem-core`.
