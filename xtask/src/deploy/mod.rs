//! Deployment files and images: the topology rendered for Compose, nginx, PgBouncer and
//! Kubernetes, and the Docker paths (`images`, `up --docker`).

pub mod compose;
pub mod engine;
pub mod images;
pub mod render;
#[cfg(test)]
mod render_tests;
