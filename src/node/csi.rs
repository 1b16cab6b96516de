//! The CSI spec's messages and services, generated at build time from `proto/csi.proto` (the
//! spec's own file, vendored with its licence header): the same file an independent client is
//! generated from in the tests.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("csi.v1");
