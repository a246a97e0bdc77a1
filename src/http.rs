//! The HTTP face of lank8s: the server and its middleware, and the /v2
//! registry API on top of the core, and the token service for accounts.

pub mod listing;
pub mod range;
pub mod registry;
pub mod server;
pub mod token;
