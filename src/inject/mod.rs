//! Pod injection (pure).
