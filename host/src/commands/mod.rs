pub mod devices;
pub mod info;
pub mod pair;
