//! Synod's core: the sans-IO node contract and the small pieces every protocol shares.
//!
//! Nothing in this crate performs I/O, reads the wall clock, spawns threads or draws
//! unseeded randomness. Protocols (crate `synod-protocols`) are written against
//! [`node::Node`]; drivers (the simulator, the model checker, the real runtime) feed
//! nodes inputs and carry out the effects they push into a [`node::Context`].

pub mod clock;
pub mod frame;
pub mod hash;
pub mod kv;
pub mod node;
pub mod rng;
pub mod session;
pub mod time;
pub mod unique_id;
