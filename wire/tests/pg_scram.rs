//! SCRAM-SHA-256 startup against an in-process server side (RFC 5802/7677).
//!
//! postgres-protocol draws the client nonce from the thread RNG with no way
//! to inject it, so a recorded exchange cannot be replayed; this server
//! computes its messages from whatever nonce the client sends, checks the
//! client's proof the way PostgreSQL does, and proves itself in return.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use ringside_wire::pg::{PgError, Startup, StartupParams, TxStatus};
use sha2::{Digest, Sha256};

const SALT: &[u8] = b"ringside-salt-16";
const ITERATIONS: u32 = 4096;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    frame(b'R', &[&code.to_be_bytes()[..], data].concat())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block: SCRAM's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &[0, 0, 0, 1]].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// Takes one frontend message off the front of `out`.
fn take_message(out: &mut BytesMut) -> (u8, Vec<u8>) {
    let len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
    let msg = out.split_to(1 + len);
    (msg[0], msg[5..].to_vec())
}

enum Server {
    /// Knows the password; answers honestly.
    Honest,
    /// Sends a server signature computed from another password.
    Impostor,
    /// Refuses the proof in the server-final message (`e=`).
    SaslError,
}

/// Runs startup with `client_password` against a server whose role has
/// `server_password`.
fn run(
    client_password: &[u8],
    server_password: &[u8],
    server: Server,
) -> Result<(i32, TxStatus), PgError> {
    let mut out = BytesMut::new();
    let params = StartupParams {
        user: "ringside_scram",
        password: Some(client_password),
        ..Default::default()
    };
    let mut s = Startup::new(&params, &mut out);
    let _startup = take_message_untagged(&mut out);

    let mut input = BytesMut::from(&auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")[..]);
    assert!(s.feed(&mut input, &mut out)?.is_none());

    // SASLInitialResponse: mechanism, length, client-first-message.
    let (tag, body) = take_message(&mut out);
    assert_eq!(tag, b'p');
    let mech_end = body.iter().position(|&b| b == 0).unwrap();
    assert_eq!(&body[..mech_end], b"SCRAM-SHA-256");
    let client_first = std::str::from_utf8(&body[mech_end + 5..])
        .unwrap()
        .to_owned();
    let declared = i32::from_be_bytes(body[mech_end + 1..mech_end + 5].try_into().unwrap());
    assert_eq!(declared as usize, client_first.len());
    // No channel binding, and the user name comes from the startup packet.
    let client_first_bare = client_first
        .strip_prefix("n,,")
        .expect("gs2 header n,,")
        .to_owned();
    let client_nonce = client_first_bare.strip_prefix("n=,r=").unwrap().to_owned();
    assert!(client_nonce.len() >= 18, "nonce {client_nonce:?}");

    let nonce = format!("{client_nonce}ServerPart");
    let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(SALT));
    input.extend_from_slice(&auth(11, server_first.as_bytes()));
    assert!(s.feed(&mut input, &mut out)?.is_none());

    // SASLResponse: client-final-message.
    let (tag, body) = take_message(&mut out);
    assert_eq!(tag, b'p');
    let client_final = String::from_utf8(body).unwrap();
    let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
    assert_eq!(without_proof, format!("c=biws,r={nonce}"));
    let proof = B64.decode(proof).unwrap();

    // The server's check, from the stored verifier (StoredKey, ServerKey).
    let salted = hi(server_password, SALT, ITERATIONS);
    let stored_key: [u8; 32] = Sha256::digest(hmac(&salted, b"Client Key")).into();
    let server_key = hmac(&salted, b"Server Key");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    if <[u8; 32]>::from(Sha256::digest(&client_key)) != stored_key {
        input.extend_from_slice(&frame(
            b'E',
            b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"ringside_scram\"\0\0",
        ));
        s.feed(&mut input, &mut out)?;
        unreachable!("an ErrorResponse must fail startup");
    }

    let server_final = match server {
        Server::Honest => format!(
            "v={}",
            B64.encode(hmac(&server_key, auth_message.as_bytes()))
        ),
        Server::Impostor => {
            let wrong = hmac(&hi(b"not-the-password", SALT, ITERATIONS), b"Server Key");
            format!("v={}", B64.encode(hmac(&wrong, auth_message.as_bytes())))
        }
        Server::SaslError => "e=invalid-proof".to_owned(),
    };
    input.extend_from_slice(&auth(12, server_final.as_bytes()));
    input.extend_from_slice(&auth(0, b""));
    input.extend_from_slice(&frame(b'S', b"server_version\x0015.0\0"));
    input.extend_from_slice(&frame(b'K', &[0, 0, 0, 99, 0, 0, 0, 1]));
    input.extend_from_slice(&frame(b'Z', b"I"));
    let session = s.feed(&mut input, &mut out)?.expect("session");
    assert!(
        out.is_empty(),
        "nothing to send after the client-final message"
    );
    assert!(input.is_empty());
    Ok((session.process_id, session.transaction_status))
}

fn take_message_untagged(out: &mut BytesMut) -> Vec<u8> {
    let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
    out.split_to(len).to_vec()
}

#[test]
fn hi_matches_rfc7677_vector() {
    // RFC 7677 section 3: user "user", password "pencil".
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let salted = hi(b"pencil", &salt, 4096);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let sig = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    assert_eq!(
        B64.encode(proof),
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    let server_sig = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    assert_eq!(
        B64.encode(server_sig),
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

#[test]
fn scram_success() {
    assert_eq!(
        run(b"scrampass", b"scrampass", Server::Honest),
        Ok((99, TxStatus::Idle))
    );
}

#[test]
fn scram_wrong_password_is_the_servers_error() {
    let err = run(b"wrong", b"scrampass", Server::Honest).unwrap_err();
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
}

#[test]
fn scram_server_that_cannot_prove_itself_is_refused() {
    let err = run(b"scrampass", b"scrampass", Server::Impostor).unwrap_err();
    assert!(
        matches!(err, PgError::Auth(ref m) if m.contains("server-final")),
        "{err}"
    );
    let err = run(b"scrampass", b"scrampass", Server::SaslError).unwrap_err();
    assert!(
        matches!(err, PgError::Auth(ref m) if m.contains("invalid-proof")),
        "{err}"
    );
}
