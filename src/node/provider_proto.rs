//! The Secrets Store CSI driver's provider service (`v1alpha1.CSIDriverProvider`), generated at
//! build time from `proto/service.proto` (the driver's own file, vendored with its licence
//! header): the same file the tests' independent client is generated from.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("v1alpha1");
