//! The cafs control API: the `.proto` definition (package `cafs.v1`, versioned so that a later incompatible
//! API can live beside it) and the tonic/prost code generated from it, shared by `cafsd` (server) and `fsctl`
//! (client).

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("cafs.v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1;

    #[test]
    fn messages_round_trip_on_the_wire() {
        let req =
            v1::CommitRequest { mount_point: "/cafs/job-1".into(), message: "done".into(), into_ref: String::new() };
        let bytes = req.encode_to_vec();
        assert_eq!(v1::CommitRequest::decode(bytes.as_slice()).unwrap(), req);
        // Garbage is an error, not a panic.
        assert!(v1::CommitRequest::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
