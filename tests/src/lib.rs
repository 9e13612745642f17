//! Helpers for end-to-end tests of the real binary.
