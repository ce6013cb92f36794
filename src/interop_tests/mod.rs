//! Tests that run dpskit's clients (device, DPS, REST) against the emulator or servers built
//! from its parts, over real TLS on 127.0.0.1. They are the one room that may use both sides:
//! the clients and the emulator never import each other, not even in their own tests.

mod arm_operations;
mod arm_resources;
mod doctor;
mod events_reader;
mod hub_client;
mod hub_devices;
mod hub_renewal;
mod issuance;
mod proof_of_possession;
mod provisioning;
mod request_recorder;
mod rest_clients;
mod service_clients;
mod websockets;
