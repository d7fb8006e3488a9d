//! The view: what the mount believes exists. The inode table (`table`, `node`),
//! the names known absent (`negative`), and lookup and listing (`lookup`), which
//! fill them from the journal's overlay and the coffer, one listing of a
//! directory at a time (`flight`) and ahead of walkers (`ahead`). Nothing here
//! changes the namespace or knows about open handles or FUSE.

mod ahead;
mod flight;
mod lookup;
mod negative;
mod node;
mod table;

pub use ahead::ReadAhead;
pub use flight::Flights;
pub use negative::NegativeCache;
pub use node::{
    join, usable_name, Aliases, Data, Etag, Kind, Node, Origin, Tick, ViewEntry, RESERVED, ROOT,
};
pub use table::Table;
