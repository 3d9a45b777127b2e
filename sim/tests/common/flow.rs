//! A minimal host side of the activation exchange, built only from `station_protocol` codecs
//! and a plain HTTP client, to drive a bench the way the station does (docs/protocol.md §5.7).
//! Shared by the tests and `examples/activate.rs`.

#![allow(dead_code)]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plist::Value;
use station_protocol::activation::{
    classify_response, device_activation_request, drm_handshake_request, ActivationResponse,
    Endpoint, FormEncoding, HttpRequestParts,
};
use station_protocol::channel::PlistChannel;
use station_protocol::lockdown::{LockdownClient, LOCKDOWN_PORT};
use station_protocol::mobileactivation::{self, Command, MobileActivationError};
use station_protocol::pairing::{generate_pair_record, HostIdentity, PairRecord};
use station_protocol::usbmux::UsbmuxClient;
use tokio::net::UnixStream;

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Bound for every device and HTTP step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP answer as received.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn classify(&self) -> ActivationResponse {
        classify_response(self.status, &self.headers, &self.body)
    }
}

/// One host identity per process: only device certificates are per phone.
async fn host_identity() -> Result<Arc<HostIdentity>, BoxError> {
    static IDENTITY: OnceLock<Arc<HostIdentity>> = OnceLock::new();
    if let Some(id) = IDENTITY.get() {
        return Ok(id.clone());
    }
    let id = tokio::task::spawn_blocking(HostIdentity::generate).await??;
    Ok(IDENTITY.get_or_init(|| Arc::new(id)).clone())
}

async fn step<T, E: Into<BoxError>>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(format!("{what} timed out").into()),
    }
}

/// A paired phone with a lockdown session, and an HTTP client for the activation server.
pub struct Driver {
    pub socket: PathBuf,
    pub udid: String,
    pub device_id: u32,
    pub record: PairRecord,
    /// `http://127.0.0.1:PORT`, the server the endpoints live on.
    origin: String,
    lockdown: LockdownClient<UnixStream>,
    http: reqwest::Client,
}

impl Driver {
    /// Finds the phone, pairs (saving the record in the bench's usbmuxd, as a host does),
    /// and starts a session. `activation_url` is the ready file's `activation_url`.
    pub async fn connect(
        socket: &Path,
        udid: &str,
        activation_url: &str,
    ) -> Result<Self, BoxError> {
        let origin = activation_url
            .strip_suffix("/deviceservices")
            .ok_or("activation_url does not end in /deviceservices")?
            .to_string();
        let mux = || async {
            step("usbmuxd connect", UnixStream::connect(socket))
                .await
                .map(UsbmuxClient::new)
        };
        let devices = step("ListDevices", mux().await?.list_devices()).await?;
        let device_id = devices
            .iter()
            .find(|d| d.udid == udid)
            .map(|d| d.device_id)
            .ok_or_else(|| format!("{udid} is not plugged in"))?;
        let buid = step("ReadBUID", mux().await?.read_buid()).await?;
        let stream = step(
            "Connect lockdown",
            mux().await?.connect(device_id, LOCKDOWN_PORT),
        )
        .await?;
        let mut lockdown = LockdownClient::new(stream, "sim-activation");
        lockdown.set_timeout(STEP_TIMEOUT);
        let key = step(
            "GetValue DevicePublicKey",
            lockdown.get_value(None, Some("DevicePublicKey")),
        )
        .await?;
        let key = key.as_data().ok_or("DevicePublicKey is not data")?.to_vec();
        let identity = host_identity().await?;
        let buid2 = buid.clone();
        let mut record = tokio::task::spawn_blocking(move || {
            generate_pair_record(&key, &buid2, None, Some(&identity))
        })
        .await??;
        let bag = step("Pair", lockdown.pair(record.pair_request_value())).await?;
        record.escrow_bag = bag;
        step(
            "SavePairRecord",
            mux()
                .await?
                .save_pair_record(udid, record.to_binary(), Some(device_id)),
        )
        .await?;
        let tls = station_protocol::tls::client_config(
            &record.host_certificate,
            &record.host_private_key,
        )?;
        step(
            "StartSession",
            lockdown.start_session(&record.host_id, &buid, tls),
        )
        .await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP_TIMEOUT)
            .build()?;
        Ok(Driver {
            socket: socket.to_path_buf(),
            udid: udid.to_string(),
            device_id,
            record,
            origin,
            lockdown,
            http,
        })
    }

    /// A lockdown value read in the session.
    pub async fn get_value(&mut self, key: &str) -> Result<Value, BoxError> {
        step("GetValue", self.lockdown.get_value(None, Some(key))).await
    }

    pub async fn set_value(&mut self, key: &str, value: Value) -> Result<(), BoxError> {
        step("SetValue", self.lockdown.set_value(None, key, value)).await
    }

    pub fn lockdown(&mut self) -> &mut LockdownClient<UnixStream> {
        &mut self.lockdown
    }

    /// Starts mobileactivationd and connects to it (TLS with the pair record).
    pub async fn service(&mut self) -> Result<PlistChannel<UnixStream>, BoxError> {
        let service = step(
            "StartService",
            self.lockdown.start_service(mobileactivation::SERVICE, None),
        )
        .await?;
        let stream = step(
            "Connect service",
            UsbmuxClient::new(step("usbmuxd connect", UnixStream::connect(&self.socket)).await?)
                .connect(self.device_id, service.port),
        )
        .await?;
        let mut channel = PlistChannel::new(stream);
        channel.set_timeout(Some(STEP_TIMEOUT));
        if service.ssl {
            let tls = station_protocol::tls::client_config(
                &self.record.host_certificate,
                &self.record.host_private_key,
            )?;
            step("service TLS", channel.start_tls_client(tls)).await?;
        }
        Ok(channel)
    }

    /// One mobileactivationd command on a fresh connection, as the daemon wants.
    pub async fn command(
        &mut self,
        command: &Command,
    ) -> Result<Result<Option<Value>, MobileActivationError>, BoxError> {
        let mut channel = self.service().await?;
        Ok(
            match tokio::time::timeout(
                STEP_TIMEOUT,
                mobileactivation::send_command(&mut channel, command),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => return Err(format!("{} timed out", command.name()).into()),
            },
        )
    }

    /// A hand-built request (what [`Command`] would never send), answered by the phone's
    /// reply dictionary.
    pub async fn raw_command(&mut self, request: &Value) -> Result<Value, BoxError> {
        let mut channel = self.service().await?;
        step("raw command", channel.send(request)).await?;
        step("raw reply", channel.recv()).await
    }

    pub async fn activation_state(&mut self) -> Result<String, BoxError> {
        let value = self.command(&Command::GetActivationState).await??;
        Ok(mobileactivation::activation_state(value)?)
    }

    pub fn endpoint_url(&self, endpoint: Endpoint) -> String {
        endpoint.url_on(&self.origin)
    }

    /// Sends a request built by the protocol crate to the bench's server.
    pub async fn post(&self, req: &HttpRequestParts) -> Result<HttpAnswer, BoxError> {
        let mut builder = self.http.post(self.endpoint_url(req.endpoint));
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let resp = builder.body(req.body.clone()).send().await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = resp.bytes().await?.to_vec();
        Ok(HttpAnswer {
            status,
            headers,
            body,
        })
    }

    /// `CreateTunnel1SessionInfoRequest` → `drmHandshake`: the raw HTTP answer.
    pub async fn handshake(&mut self) -> Result<HttpAnswer, BoxError> {
        let command = Command::CreateTunnel1SessionInfo;
        let value = self.command(&command).await??;
        let session_info = mobileactivation::dictionary(&command, value)?;
        self.post(&drm_handshake_request(&Value::Dictionary(session_info))?)
            .await
    }

    /// The handshake, then `CreateTunnel1ActivationInfoRequest` with its body.
    pub async fn activation_info(&mut self) -> Result<Value, BoxError> {
        let answer = self.handshake().await?;
        if answer.status != 200 {
            return Err(format!("drmHandshake answered {}", answer.status).into());
        }
        self.activation_info_from(answer.body).await
    }

    pub async fn activation_info_from(
        &mut self,
        handshake_body: Vec<u8>,
    ) -> Result<Value, BoxError> {
        let command = Command::CreateTunnel1ActivationInfo {
            handshake_response: handshake_body,
        };
        let value = self.command(&command).await??;
        Ok(Value::Dictionary(mobileactivation::dictionary(
            &command, value,
        )?))
    }

    /// The first `deviceActivation` request for an activation info.
    pub async fn request_activation(
        &self,
        info: &Value,
        encoding: FormEncoding,
    ) -> Result<HttpAnswer, BoxError> {
        self.post(&device_activation_request(info, encoding)?).await
    }

    /// `HandleActivationInfoWithSessionRequest` with a body and headers as received.
    pub async fn hand_over(
        &mut self,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<Result<Option<Value>, MobileActivationError>, BoxError> {
        self.command(&Command::HandleActivationInfoWithSession { body, headers })
            .await
    }
}
