//! Seeded simulator (see README).
