//! Deployment files and images: the topology rendered for Compose, nginx, PgBouncer and
//! Kubernetes, and the Docker paths (`images`, `up --docker`).

pub mod docker;
pub mod render;
#[cfg(test)]
mod render_tests;
