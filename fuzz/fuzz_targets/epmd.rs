//! The EPMD codec, as local nodes and a local epmd speak it: requests,
//! PORT2 answers, NAMES answers, node names. A value or an error.
#![no_main]
use erlmesh::epmd::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((req, used)) = codec::parse_request(data) {
        assert!(used <= data.len());
        let again = codec::parse_request(&codec::encode_request(&req)).expect("an encoded request parses");
        assert_eq!(format!("{:?}", again.0), format!("{req:?}"));
    }
    let _ = codec::parse_body(data);
    let _ = codec::parse_port2_resp(data);
    let _ = codec::parse_names_reply(data);
    let _ = codec::check_name(data);
    if data.len() >= 2 {
        let _ = codec::request_len([data[0], data[1]]);
    }
});
