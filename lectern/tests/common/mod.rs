//! Test harness: runs the real `lectern` binary on port 0 with a fresh data folder and a fresh
//! database (SQLite file, or a new PostgreSQL database per test), like zero2prod's `spawn_app`.

#![allow(dead_code, unused_imports)]

mod app;
mod browser;
mod faults;
mod hls;
mod media;
mod nginx;

pub use app::*;
pub use browser::*;
pub use faults::*;
pub use hls::*;
pub use media::*;
pub use nginx::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_pbutils as gst_pbutils;
use lectern_core::auth::{Keys, Role};
use serde_json::Value;
