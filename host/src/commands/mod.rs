pub mod activate;
pub mod devices;
pub mod info;
pub mod pair;
