//! corral
