//! Comparing a shadow model's answer with the production answer taken from the wire, the way an
//! ML engineer would: status first, then bodies after undoing `Content-Encoding`, then
//! protocol-aware (inference protocols), then generic JSON, then bytes.
pub mod verdict;
