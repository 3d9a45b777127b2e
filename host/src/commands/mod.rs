pub mod activate;
pub mod config;
pub mod devices;
pub mod info;
pub mod pair;
