//! The byte stream a virtual phone serves a connection on: a usbmuxd socket connection
//! (the socket bench) or a mux connection over USB bulk endpoints (the gadget,
//! `usb_device`). Lockdown and the services run on either unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use station_protocol::usb_mux::driver::MuxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

#[derive(Debug)]
pub enum PhoneStream {
    Usbmuxd(UnixStream),
    Usb(MuxStream),
}

impl AsyncRead for PhoneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PhoneStream::Usbmuxd(s) => Pin::new(s).poll_read(cx, buf),
            PhoneStream::Usb(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PhoneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PhoneStream::Usbmuxd(s) => Pin::new(s).poll_write(cx, data),
            PhoneStream::Usb(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PhoneStream::Usbmuxd(s) => Pin::new(s).poll_flush(cx),
            PhoneStream::Usb(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PhoneStream::Usbmuxd(s) => Pin::new(s).poll_shutdown(cx),
            PhoneStream::Usb(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
