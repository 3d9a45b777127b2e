pub mod activate;
pub mod codes;
pub mod config;
pub mod devices;
pub mod info;
pub mod pair;
pub mod report;
pub mod run;
