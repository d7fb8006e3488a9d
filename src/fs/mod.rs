//! The filesystem side of cofferfs: everything between a writer or reader and the
//! `ObjectStore`. Talks to the network only through that trait.

pub mod upload;
