//! A response holds its backend's concurrency slot until its body ends, so a
//! long download counts as in flight: the permit is the body's guard.

use tokio::sync::OwnedSemaphorePermit;

use crate::body::BodyGuard;

impl BodyGuard for OwnedSemaphorePermit {}
