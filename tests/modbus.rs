//! Points over Modbus TCP against a real Modbus TCP server on loopback
//! (tokio-modbus's server, in the test): polling of registers, coils and
//! inputs, writes, and a device that goes away and comes back.

mod common;

use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, REPLY_TIMEOUT, Server, Socket, command, receive_push, temp_dir};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::tcp::{Server as ModbusServer, accept_tcp_connection};

/// The device's memory: what the server answers and what writes change.
#[derive(Default)]
struct Registers {
    holding: Mutex<HashMap<u16, u16>>,
    coils: Mutex<HashMap<u16, bool>>,
    discrete: Mutex<HashMap<u16, bool>>,
}

impl Registers {
    fn holding(&self, address: u16) -> u16 {
        self.holding
            .lock()
            .unwrap()
            .get(&address)
            .copied()
            .unwrap_or(0)
    }

    fn set_holding(&self, address: u16, value: u16) {
        self.holding.lock().unwrap().insert(address, value);
    }

    fn coil(&self, address: u16) -> bool {
        self.coils
            .lock()
            .unwrap()
            .get(&address)
            .copied()
            .unwrap_or(false)
    }
}

struct Service(Arc<Registers>);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let registers = &self.0;
        let words = |start: u16, count: u16| -> Vec<u16> {
            (start..start + count)
                .map(|a| registers.holding(a))
                .collect()
        };
        let bits = |map: &Mutex<HashMap<u16, bool>>, start: u16, count: u16| -> Vec<bool> {
            let map = map.lock().unwrap();
            (start..start + count)
                .map(|a| map.get(&a).copied().unwrap_or(false))
                .collect()
        };
        future::ready(match request {
            Request::ReadHoldingRegisters(start, count) => {
                Ok(Response::ReadHoldingRegisters(words(start, count)))
            }
            Request::ReadCoils(start, count) => {
                Ok(Response::ReadCoils(bits(&registers.coils, start, count)))
            }
            Request::ReadDiscreteInputs(start, count) => Ok(Response::ReadDiscreteInputs(bits(
                &registers.discrete,
                start,
                count,
            ))),
            Request::WriteSingleRegister(address, value) => {
                registers.set_holding(address, value);
                Ok(Response::WriteSingleRegister(address, value))
            }
            Request::WriteMultipleRegisters(address, values) => {
                for (offset, value) in values.iter().enumerate() {
                    registers.set_holding(address + offset as u16, *value);
                }
                Ok(Response::WriteMultipleRegisters(
                    address,
                    values.len() as u16,
                ))
            }
            Request::WriteSingleCoil(address, value) => {
                registers.coils.lock().unwrap().insert(address, value);
                Ok(Response::WriteSingleCoil(address, value))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// The Modbus TCP device: served until stopped, resumable on its port.
struct Device {
    registers: Arc<Registers>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Device {
    async fn start(registers: Arc<Registers>) -> Device {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut device = Device {
            registers,
            addr,
            task: None,
        };
        device.serve(listener);
        device
    }

    fn serve(&mut self, listener: TcpListener) {
        let registers = self.registers.clone();
        self.task = Some(tokio::spawn(async move {
            let on_connected = move |stream, addr| {
                let registers = registers.clone();
                async move {
                    accept_tcp_connection(stream, addr, |_| Ok(Some(Service(registers.clone()))))
                }
            };
            let _ = ModbusServer::new(listener)
                .serve(&on_connected, |_| {})
                .await;
        }));
    }

    /// Stops serving: the listener and every connection close.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

fn plant(device: &Device) -> Server {
    Server::start_with_env(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/points"),
        &temp_dir("data"),
        &[],
        &[("POINTS_TEST_MODBUS", &device.url())],
    )
}

async fn page(client: &Client) -> String {
    client
        .http
        .get(format!("{}/home", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn page_until(client: &Client, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let html = page(client).await;
        if check(&html) {
            return html;
        }
        assert!(Instant::now() < deadline, "the page never matched:\n{html}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pushed items for `point` until one has `value` and `quality`.
async fn point_reaches(socket: &mut Socket, point: &str, value: Value, quality: &str) {
    loop {
        let push = receive_push(socket, "points").await;
        let reached = push["set"].as_array().unwrap().iter().any(|item| {
            item["name"] == point && item["value"] == value && item["quality"] == quality
        });
        if reached {
            return;
        }
    }
}

/// Waits until `check` holds for the device's registers.
async fn registers_until(registers: &Registers, check: impl Fn(&Registers) -> bool) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !check(registers) {
        assert!(Instant::now() < deadline, "the device never saw the write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn device_registers() -> Arc<Registers> {
    let registers = Arc::new(Registers::default());
    registers.set_holding(0, 215); // boiler.temp: 21.5 °C (i16, scale 0.1)
    registers.set_holding(1, 200); // boiler.setpoint: 20
    registers.set_holding(2, 1); // boiler.energy: u32 over two registers
    registers.set_holding(3, 2);
    registers.coils.lock().unwrap().insert(0, true);
    registers.discrete.lock().unwrap().insert(0, true);
    registers
}

#[tokio::test]
async fn polling_reads_registers_coils_and_inputs() {
    let registers = device_registers();
    let device = Device::start(registers.clone()).await;
    let server = plant(&device);
    let client = server.client("plant").await;
    let html = page_until(&client, |html| html.contains(">21.5 °C</span>")).await;
    assert!(
        html.contains(">65538</span>"),
        "two registers read as one u32:\n{html}"
    );
    assert!(
        html.contains(r#"value="20""#),
        "the setpoint field holds its register:\n{html}"
    );
    assert!(
        html.contains(r#"aria-pressed="true""#),
        "the pump's coil:\n{html}"
    );
    assert!(
        html.contains(">On</span>"),
        "the alarm's discrete input:\n{html}"
    );

    let mut socket = client.socket_tab("t", "home").await;
    registers.set_holding(0, (-50i16) as u16);
    point_reaches(&mut socket, "boiler.temp", Value::from(-5), "good").await;
}

#[tokio::test]
async fn writes_reach_holding_registers_and_coils() {
    let registers = device_registers();
    let device = Device::start(registers.clone()).await;
    let server = plant(&device);
    let client = server.client("plant").await;
    page_until(&client, |html| html.contains(">21.5 °C</span>")).await;
    let mut socket = client.socket_tab("t", "home").await;

    let reply = command(&mut socket, 1, "point:boiler.setpoint", "22.5").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    registers_until(&registers, |r| r.holding(1) == 225).await;
    // Read back from the device (the push may come before the reply).
    page_until(&client, |html| html.contains(r#"value="22.5""#)).await;

    let reply = command(&mut socket, 2, "point:pump.running", "false").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    registers_until(&registers, |r| !r.coil(0)).await;

    let reply = command(&mut socket, 3, "point:alarm", "false").await;
    assert_eq!(
        reply["status"], "error",
        "a discrete input is read-only: {reply}"
    );
}

#[tokio::test]
async fn a_device_that_goes_away_and_comes_back() {
    let registers = device_registers();
    let mut device = Device::start(registers.clone()).await;
    let server = plant(&device);
    let client = server.client("plant").await;
    page_until(&client, |html| html.contains(">21.5 °C</span>")).await;
    let mut socket = client.socket_tab("t", "home").await;

    device.stop().await;
    point_reaches(&mut socket, "boiler.temp", Value::from(21.5), "stale").await;
    let reply = command(&mut socket, 1, "point:boiler.setpoint", "21").await;
    assert_eq!(
        reply["actions"][0]["message"], "The device is offline",
        "{reply}"
    );

    registers.set_holding(0, 230);
    device.resume().await;
    point_reaches(&mut socket, "boiler.temp", Value::from(23), "good").await;
    let log = server.wait_for_log("connected to the Modbus device");
    assert_eq!(
        log.matches("lost the Modbus device").count(),
        1,
        "said once:\n{log}"
    );
}
