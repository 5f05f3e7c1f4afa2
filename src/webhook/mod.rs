//! Admission webhook (I/O).
