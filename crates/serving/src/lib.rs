//! Serving config: the nginx configuration that serves a memfis tree straight from the store
//! (docs/serving.md). [`ServeOptions`] says what to serve and how; [`render`] checks them and
//! writes the `upstream`, `server` or `location` blocks.

mod options;
mod render;

pub use options::{Part, SOURCE_EXTS, ServeOptions};
pub use render::render;
