//! placeholder while scaffolding
