//! Real-time push: one reader per instance tails the change feed and fans
//! each committed change out to subscribers in memory. Subscribers that
//! resume from a cursor catch up from the table first, then join the live
//! stream without a gap or a duplicate at the seam.

pub mod event;
pub mod hub;
pub mod listener;
pub mod subscription;

pub use event::PushEvent;
pub use hub::Hub;
pub use subscription::{PushMessage, subscribe};
