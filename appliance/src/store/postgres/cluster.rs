//! Cluster coordination (placeholder).
