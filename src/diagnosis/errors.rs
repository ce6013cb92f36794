//! The catalogue of DPS and IoT Hub errors (helper C fills this in; see the brief).
