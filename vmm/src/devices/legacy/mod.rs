//! Legacy (port I/O) devices: the serial console, the i8042 reset line, and the ports Linux
//! probes that answer with "nothing here".

pub mod i8042;
pub mod ignored;
pub mod serial;
