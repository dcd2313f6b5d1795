//! Netlink: sends a [`Transaction`] (an in-place update or a full replace) to the kernel as one
//! nf_tables netlink batch, without running `nft`.
//!
//! Why: nft 1.0.6 dumps the whole table into its cache before it runs `add rule` or `delete chain`,
//! so at 10k services (~30k chains) every `nft -f -` costs ~140 ms however small the change. The
//! kernel needs no cache. Measured with `proxy_benchmark` in `net/tests/netns.rs` (2-core VM,
//! kernel 6.18, nft 1.0.6, 10k services × 2 endpoints, one-endpoint changes of ~6 ops): nft text
//! 140-190 ms p50; this module 55-59 ms p50, 74-87 ms p99, of which encoding is ~0.2 ms. The rest
//! is the kernel's commit, which any interface pays: a new jump or goto (in a rule or a map
//! element) makes it re-validate the whole table (`nft_table_validate` walks every chain reachable
//! from each base chain).
//!
//! Invariants:
//! - One [`Netlink::apply`] is one batch (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`), so the
//!   kernel commits all of it or, if it refuses any message, none of it ([`Error::Refused`],
//!   [`Error::CommitFailed`]: the table is as before). After any other error the table's state is
//!   unknown and the caller must go back to a full replace through nft.
//! - Every rule is encoded with exactly the expressions nft 1.0.6 generates for its text form (the
//!   same payload loads, registers, nfproto dependencies and data byte orders, checked against
//!   `nft --debug=netlink,mnl`), so `nft list table inet nodus` cannot tell the two paths apart.
//!   Sets and maps carry nft's own key types and userdata for the same reason.
//! - A full replace is the batch nft sends for its text: `add table`, `delete table`, `add table`
//!   with the comment, then every object; the kernel swaps the whole table at the commit. Only
//!   its last message asks for an acknowledgement (as nft, the others answer only when refused):
//!   at 10k services an answer per message would be ~100k answers to queue and read.
//! - Whatever is not encoded is refused with [`Error::Unsupported`] before anything is sent, so the
//!   caller can fall back to nft text: an inline `numgen ... vmap` with no target (nft refuses it
//!   as well).
//! - The socket stays in the network namespace it was opened in; only `table inet nodus` is named.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
};

use super::model::Protocol;
use super::ruleset::{
    ChainType, FAMILY, Family, HookPoint, Match, Rule, SetKind, Stmt, TABLE, TABLE_COMMENT,
    Verdict, expand,
};
use super::transaction::{Element, Op, Transaction};

/// An error applying a transaction through netlink, naming the table it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netfilter netlink socket for table {FAMILY} {TABLE}")]
    Open(#[source] Errno),
    /// Nothing was sent: apply this transaction as nft text instead.
    #[error("not encoded as a netlink batch (use nft): {0}")]
    Unsupported(String),
    #[error("sending the netlink batch for table {FAMILY} {TABLE} ({bytes} bytes)")]
    Send {
        bytes: usize,
        #[source]
        source: Errno,
    },
    /// The answers could not be read (e.g. ENOBUFS: some were dropped); the state is unknown.
    #[error("reading the kernel's answers for table {FAMILY} {TABLE}; its state is unknown")]
    Receive(#[source] Errno),
    /// The kernel refused this operation and aborted the whole batch: nothing changed.
    #[error(
        "the kernel refused `{op}` ({errno}); the batch was aborted, table {FAMILY} {TABLE} is unchanged"
    )]
    Refused { op: String, errno: Errno },
    /// Every message was accepted but the commit failed: nothing changed.
    #[error(
        "the kernel refused to commit the batch for table {FAMILY} {TABLE} ({0}); nothing changed"
    )]
    CommitFailed(Errno),
    #[error(
        "{missing} of {asked} acknowledgements asked of the kernel for table {FAMILY} {TABLE} never came; its state is unknown"
    )]
    MissingAnswers { missing: usize, asked: usize },
}

/// A NETLINK_NETFILTER socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    /// Serializes applies: the answers of two interleaved batches could not be told apart.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    seq: u32,
    recv: Vec<u8>,
    sndbuf: usize,
    rcvbuf: usize,
}

impl Netlink {
    /// Opens the socket in the caller's (thread's) network namespace.
    pub fn open() -> Result<Netlink, Error> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(Error::Open)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(Error::Open)?;
        Ok(Netlink {
            fd,
            state: Mutex::new(State {
                seq: 1,
                // Big enough for any answer: an error echoes the refused message (< 64 KiB + header).
                recv: vec![0; 80 * 1024],
                sndbuf: 0,
                rcvbuf: 0,
            }),
        })
    }

    /// Applies `tx` as one atomic batch; returns the wall time from encoding to the last answer.
    pub fn apply(&self, tx: &Transaction<'_>) -> Result<Duration, Error> {
        let start = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = encode(tx, state.seq)?;
        state.seq = batch.seq;
        if batch.owners.is_empty() {
            return Ok(start.elapsed());
        }
        let fd = self.fd.as_raw_fd();
        // Leftovers of an earlier apply (or its pending ENOBUFS) must not be read as answers.
        while let Ok(_) | Err(Errno::ENOBUFS | Errno::EINTR) =
            socket::recv(fd, &mut state.recv, MsgFlags::MSG_DONTWAIT)
        {}
        // The batch must fit one datagram, and every answer the receive queue; the kernel drops
        // answers that do not fit, which would leave the outcome unknown.
        let sndbuf = batch.buf.len() + 64 * 1024;
        if sndbuf > state.sndbuf {
            set_buffer(&self.fd, sockopt::SndBufForce, sockopt::SndBuf, sndbuf);
            state.sndbuf = sndbuf;
        }
        // Room for every requested acknowledgement, and for refusals echoing the whole batch.
        let acks = batch.acked.iter().filter(|a| **a).count();
        let rcvbuf = acks * 2048 + batch.buf.len() + 256 * 1024;
        if rcvbuf > state.rcvbuf {
            set_buffer(&self.fd, sockopt::RcvBufForce, sockopt::RcvBuf, rcvbuf);
            state.rcvbuf = rcvbuf;
        }
        socket::send(fd, &batch.buf, MsgFlags::empty()).map_err(|source| Error::Send {
            bytes: batch.buf.len(),
            source,
        })?;
        // The kernel processes a batch synchronously inside send(2): every answer is queued by now.
        let mut answers = Answers::new(batch.first_seq, &batch.acked);
        loop {
            match socket::recv(fd, &mut state.recv, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => answers.parse(&state.recv[..n]),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::Receive(e)),
            }
        }
        answers.verdict(tx, &batch.owners)?;
        Ok(start.elapsed())
    }
}

/// Sets a socket buffer size, beyond the sysctl limit when allowed (we have CAP_NET_ADMIN anyway).
fn set_buffer<F, P>(fd: &OwnedFd, force: F, plain: P, size: usize)
where
    F: socket::SetSockOpt<Val = usize>,
    P: socket::SetSockOpt<Val = usize>,
{
    // A failure shows up as EMSGSIZE on send or as missing answers, both reported.
    if socket::setsockopt(fd, force, &size).is_err() {
        let _ = socket::setsockopt(fd, plain, &size);
    }
}

/// The answers to one batch: an ack per message that asked for one and an error per refused
/// message, plus possibly an error for the batch itself (sequence number of BATCH_BEGIN) when the
/// commit fails.
struct Answers {
    begin_seq: u32,
    first_seq: u32,
    /// Per message: whether it still owes an acknowledgement.
    owed: Vec<bool>,
    /// How many messages asked for one.
    asked: usize,
    errors: Vec<(u32, Errno)>,
}

impl Answers {
    fn new(first_seq: u32, acked: &[bool]) -> Answers {
        Answers {
            begin_seq: first_seq.wrapping_sub(1),
            first_seq,
            owed: acked.to_vec(),
            asked: acked.iter().filter(|a| **a).count(),
            errors: Vec::new(),
        }
    }

    fn parse(&mut self, mut buf: &[u8]) {
        // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; NLMSG_ERROR adds an i32. A
        // datagram cut short (an echoed message too large for the buffer) still has those.
        while buf.len() >= 20 {
            let word =
                |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let len = word(0) as usize;
            let ty = u16::from_ne_bytes([buf[4], buf[5]]);
            let seq = word(8);
            if ty == NLMSG_ERROR {
                let code = word(16) as i32;
                if code == 0 {
                    if let Some(owed) = self.owed.get_mut(seq.wrapping_sub(self.first_seq) as usize)
                    {
                        *owed = false;
                    }
                } else {
                    self.errors.push((seq, Errno::from_raw(-code)));
                }
            }
            if len < 16 {
                break;
            }
            buf = &buf[align(len).min(buf.len())..];
        }
    }

    fn verdict(&self, tx: &Transaction<'_>, owners: &[Option<usize>]) -> Result<(), Error> {
        let index = |seq: u32| seq.wrapping_sub(self.first_seq) as usize;
        // The first refused message is the cause; later ones often only follow from it.
        if let Some(&(seq, errno)) = self
            .errors
            .iter()
            .filter(|(seq, _)| *seq == self.begin_seq || index(*seq) < owners.len())
            .min_by_key(|(seq, _)| seq.wrapping_sub(self.begin_seq))
        {
            return Err(match owners.get(index(seq)) {
                Some(&owner) if seq != self.begin_seq => Error::Refused {
                    op: owner.map_or_else(
                        || format!("replace table {FAMILY} {TABLE}"),
                        |op| describe(&tx.ops[op]),
                    ),
                    errno,
                },
                _ => Error::CommitFailed(errno),
            });
        }
        let missing = self.owed.iter().filter(|owed| **owed).count();
        if missing > 0 {
            return Err(Error::MissingAnswers {
                missing,
                asked: self.asked,
            });
        }
        Ok(())
    }
}

/// An operation as the nft text would say it, for errors.
fn describe(op: &Op<'_>) -> String {
    let t = format!("{FAMILY} {TABLE}");
    match op {
        Op::AddChain { name, .. } => format!("add chain {t} {name}"),
        Op::AddSet { name, .. } => format!("add set {t} {name}"),
        Op::FlushChain(name) => format!("flush chain {t} {name}"),
        Op::AddRule { chain, rule } => format!("add rule {t} {chain} {rule}"),
        Op::DeleteElements { set, elements } => {
            format!("delete element {t} {set} ({} elements)", elements.len())
        }
        Op::AddElements { set, elements } => {
            format!("add element {t} {set} ({} elements)", elements.len())
        }
        Op::DeleteChain(name) => format!("delete chain {t} {name}"),
        Op::DeleteSet { name, .. } => format!("delete set {t} {name}"),
    }
}

// Netlink and nf_tables constants (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h).
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_FLAGS_AT: usize = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USERDATA: u16 = 6;
/// nft's userdata TLV type for a table comment (NFTNL_UDATA_TABLE_COMMENT).
const UDATA_TABLE_COMMENT: u8 = 0;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

// Verdict codes (NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO, NFT_RETURN).
const NF_DROP: i32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_NETWORK: u32 = 1;
const NFT_PAYLOAD_TRANSPORT: u32 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NF_CT_STATE_NEW: u32 = 1 << 3;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 1 << 5;
const NFTA_FIB_F_SADDR: u32 = 1 << 0;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const NFT_NG_RANDOM: u32 = 1;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_REJECT_TCP_RST: u32 = 1;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;

// nft's datatype ids, and its 6-bit shift for concatenated key types (src/datatype.h).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

/// The largest element list put in one message: attribute lengths are 16 bits.
const MAX_ELEMENTS_NEST: usize = 60_000;

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One batch being written: netlink messages back to back. Each message between the delimiters
/// remembers the op it came from (`None`: the table itself), so an error can name it.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    first_seq: u32,
    owners: Vec<Option<usize>>,
    /// Per message: whether it asks for an acknowledgement.
    acked: Vec<bool>,
    /// Whether every message asks for one (an update), or only the last (a full replace).
    ack_each: bool,
    /// Where the last nf_tables message starts.
    last_message: usize,
    current_op: Option<usize>,
    next_set_id: u32,
    /// An attribute outgrew its 16-bit length (never for our rulesets; refused, not sent).
    oversized: bool,
}

impl Batch {
    fn message(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Batch),
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (big endian).
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(self);
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.seq = self.seq.wrapping_add(1);
    }

    /// An nf_tables message for the op being encoded.
    fn nft(&mut self, msg: u16, flags: u16, body: impl FnOnce(&mut Batch)) {
        self.owners.push(self.current_op);
        self.acked.push(self.ack_each);
        self.last_message = self.buf.len();
        let ack = if self.ack_each { NLM_F_ACK } else { 0 };
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.message(ty, NLM_F_REQUEST | ack | flags, NFPROTO_INET, 0, body);
    }

    /// Asks for an acknowledgement of the last message: once it arrives (after the commit), the
    /// kernel has taken every message before it.
    fn ack_last(&mut self) {
        let Some(acked) = self.acked.last_mut() else {
            return;
        };
        *acked = true;
        let at = self.last_message + NLMSG_FLAGS_AT;
        let flags = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]) | NLM_F_ACK;
        self.buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
    }

    /// `add table` + `delete table` (so that the delete succeeds whether or not the table
    /// exists), then the table anew with nft's comment userdata.
    fn replace_table(&mut self) {
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
            b.str(NFTA_TABLE_NAME, TABLE);
            b.u32(NFTA_TABLE_FLAGS, 0);
        });
        self.nft(NFT_MSG_DELTABLE, 0, |b| b.str(NFTA_TABLE_NAME, TABLE));
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
            b.str(NFTA_TABLE_NAME, TABLE);
            b.u32(NFTA_TABLE_FLAGS, 0);
            let mut comment = Vec::with_capacity(TABLE_COMMENT.len() + 3);
            comment.push(UDATA_TABLE_COMMENT);
            comment.push(TABLE_COMMENT.len() as u8 + 1);
            comment.extend_from_slice(TABLE_COMMENT.as_bytes());
            comment.push(0);
            b.attr(NFTA_TABLE_USERDATA, &comment);
        });
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.header(ty, 4 + data.len());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn header(&mut self, ty: u16, len: usize) {
        let len = u16::try_from(len).unwrap_or_else(|_| {
            self.oversized = true;
            0
        });
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// nf_tables integers are big endian.
    fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        self.header(ty, 4 + s.len() + 1);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Batch)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        body(self);
        let len = u16::try_from(self.buf.len() - start).unwrap_or_else(|_| {
            self.oversized = true;
            0
        });
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id
    }

    fn verdict(&mut self, v: &Verdict) {
        let (code, chain) = match v {
            Verdict::Jump(c) => (NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO, Some(c)),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Drop => (NF_DROP, None),
        };
        self.nest(NFTA_DATA_VERDICT, |b| {
            b.u32(NFTA_VERDICT_CODE, code as u32);
            if let Some(chain) = chain {
                b.str(NFTA_VERDICT_CHAIN, chain);
            }
        });
    }

    // Expressions, with their attributes in the order nft 1.0.6 writes them.

    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Batch)) {
        self.nest(NFTA_LIST_ELEM, |b| {
            b.str(NFTA_EXPR_NAME, name);
            b.nest(NFTA_EXPR_DATA, data);
        });
    }

    fn meta_load(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |b| {
            b.u32(2, key); // NFTA_META_KEY
            b.u32(1, dreg); // NFTA_META_DREG
        });
    }

    fn meta_set(&mut self, key: u32) {
        self.expr("meta", |b| {
            b.u32(2, key); // NFTA_META_KEY
            b.u32(3, 1); // NFTA_META_SREG
        });
    }

    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.expr("cmp", |b| {
            b.u32(1, 1); // NFTA_CMP_SREG
            b.u32(2, op); // NFTA_CMP_OP
            b.nest(3, |b| b.attr(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
        });
    }

    fn payload(&mut self, base: u32, offset: u32, len: usize, dreg: u32) {
        self.expr("payload", |b| {
            b.u32(1, dreg); // NFTA_PAYLOAD_DREG
            b.u32(2, base); // NFTA_PAYLOAD_BASE
            b.u32(3, offset); // NFTA_PAYLOAD_OFFSET
            b.u32(4, len as u32); // NFTA_PAYLOAD_LEN
        });
    }

    /// `reg 1 = (reg 1 & mask) ^ xor`; nft writes NFTA_BITWISE_OP for `meta mark` expressions only.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8], with_op: bool) {
        self.expr("bitwise", |b| {
            b.u32(1, 1); // NFTA_BITWISE_SREG
            b.u32(2, 1); // NFTA_BITWISE_DREG
            if with_op {
                b.u32(6, 0); // NFTA_BITWISE_OP: NFT_BITWISE_BOOL
            }
            b.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            b.nest(4, |b| b.attr(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
            b.nest(5, |b| b.attr(NFTA_DATA_VALUE, xor)); // NFTA_BITWISE_XOR
        });
    }

    fn immediate_verdict(&mut self, v: &Verdict) {
        self.expr("immediate", |b| {
            b.u32(1, 0); // NFTA_IMMEDIATE_DREG: the verdict register
            b.nest(2, |b| b.verdict(v)); // NFTA_IMMEDIATE_DATA
        });
    }

    fn immediate_value(&mut self, dreg: u32, data: &[u8]) {
        self.expr("immediate", |b| {
            b.u32(1, dreg); // NFTA_IMMEDIATE_DREG
            b.nest(2, |b| b.attr(NFTA_DATA_VALUE, data)); // NFTA_IMMEDIATE_DATA
        });
    }

    /// Looks register 1 up in `set`; a map's verdict goes to the verdict register.
    fn lookup(&mut self, set: &str, verdict_map: bool) {
        self.expr("lookup", |b| {
            b.u32(2, 1); // NFTA_LOOKUP_SREG
            if verdict_map {
                b.u32(3, 0); // NFTA_LOOKUP_DREG
            }
            b.str(1, set); // NFTA_LOOKUP_SET
        });
    }

    fn numgen(&mut self, modulus: usize) {
        self.expr("numgen", |b| {
            b.u32(1, 1); // NFTA_NG_DREG
            b.u32(2, modulus as u32); // NFTA_NG_MODULUS
            b.u32(3, NFT_NG_RANDOM); // NFTA_NG_TYPE
            b.u32(4, 0); // NFTA_NG_OFFSET
        });
    }

    fn fib_addrtype(&mut self, flags: u32) {
        self.expr("fib", |b| {
            b.u32(3, flags); // NFTA_FIB_FLAGS
            b.u32(2, NFT_FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
            b.u32(1, 1); // NFTA_FIB_DREG
        });
        self.cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
    }

    fn reject(&mut self, ty: u32, code: u8) {
        self.expr("reject", |b| {
            b.u32(1, ty); // NFTA_REJECT_TYPE
            b.attr(2, &[code]); // NFTA_REJECT_ICMP_CODE
        });
    }

    /// A rule appended to `chain`; `body` writes its expressions.
    fn rule(&mut self, chain: &str, body: impl FnOnce(&mut Batch, &mut Deps)) {
        self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            b.str(NFTA_RULE_TABLE, TABLE);
            b.str(NFTA_RULE_CHAIN, chain);
            b.nest(NFTA_RULE_EXPRESSIONS, |b| body(b, &mut Deps(None)));
        });
    }

    /// Element messages for `set`, split so that each element list fits its 16-bit length.
    fn elements(
        &mut self,
        msg: u16,
        flags: u16,
        set: &str,
        elements: &[(Vec<u8>, Option<&Verdict>)],
    ) {
        let mut rest = elements;
        while !rest.is_empty() {
            self.nft(msg, flags, |b| {
                b.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                b.str(NFTA_SET_ELEM_LIST_SET, set);
                b.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    let start = b.buf.len();
                    while let [(key, data), tail @ ..] = rest {
                        if b.buf.len() - start > MAX_ELEMENTS_NEST {
                            break;
                        }
                        b.nest(NFTA_LIST_ELEM, |b| {
                            b.nest(NFTA_SET_ELEM_KEY, |b| b.attr(NFTA_DATA_VALUE, key));
                            if let Some(v) = data {
                                b.nest(NFTA_SET_ELEM_DATA, |b| b.verdict(v));
                            }
                        });
                        rest = tail;
                    }
                });
            });
        }
    }
}

/// Which `meta nfproto` dependency a rule has loaded so far: nft adds one before the first `ip` or
/// `ip6` payload of a rule and none after.
struct Deps(Option<Family>);

#[derive(Clone, Copy)]
enum Field {
    Saddr,
    Daddr,
}

fn offset(family: Family, field: Field) -> u32 {
    match (family, field) {
        (Family::V4, Field::Saddr) => 12,
        (Family::V4, Field::Daddr) => 16,
        (Family::V6, Field::Saddr) => 8,
        (Family::V6, Field::Daddr) => 24,
    }
}

fn addr_len(family: Family) -> usize {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// nft's register for the 32-bit word `word` of a concatenation: a 128-bit register name where
/// one starts (NFT_REG_1 + n), else the 32-bit one (NFT_REG32_00 + word).
fn register(word: usize) -> u32 {
    if word.is_multiple_of(4) {
        1 + word as u32 / 4
    } else {
        8 + word as u32
    }
}

impl Batch {
    fn depend(&mut self, deps: &mut Deps, family: Family) {
        if deps.0 != Some(family) {
            self.meta_load(NFT_META_NFPROTO, 1);
            let proto = match family {
                Family::V4 => NFPROTO_IPV4,
                Family::V6 => NFPROTO_IPV6,
            };
            self.cmp(NFT_CMP_EQ, &[proto]);
            deps.0 = Some(family);
        }
    }

    fn load_addr(&mut self, deps: &mut Deps, family: Family, field: Field) {
        self.depend(deps, family);
        self.payload(
            NFT_PAYLOAD_NETWORK,
            offset(family, field),
            addr_len(family),
            1,
        );
    }

    /// `ip saddr [!=] NET`: a whole-byte prefix loads only its bytes; any other prefix loads the
    /// address and masks it (nft 1.0.6's choice, so the listing is the same).
    fn addr_match(&mut self, deps: &mut Deps, field: Field, addr: IpAddr, prefix: u8, op: u32) {
        let family = Family::of(addr);
        let bytes = octets(addr);
        self.depend(deps, family);
        let prefix = usize::from(prefix);
        if prefix > 0 && prefix.is_multiple_of(8) {
            let n = prefix / 8;
            self.payload(NFT_PAYLOAD_NETWORK, offset(family, field), n, 1);
            self.cmp(op, &bytes[..n]);
        } else {
            self.payload(NFT_PAYLOAD_NETWORK, offset(family, field), bytes.len(), 1);
            let mask: Vec<u8> = (0..bytes.len())
                .map(|i| {
                    let bits = prefix.saturating_sub(i * 8).min(8);
                    (0xff00u16 >> bits) as u8
                })
                .collect();
            let network: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
            self.bitwise(&mask, &vec![0; bytes.len()], false);
            self.cmp(op, &network);
        }
    }

    fn net_match(&mut self, deps: &mut Deps, field: Field, net: &IpNet, op: u32) {
        self.addr_match(deps, field, net.network(), net.prefix_len(), op);
    }

    fn match_(&mut self, deps: &mut Deps, m: &Match) {
        match m {
            Match::CtStateNew => self.ct_bits(NFT_CT_STATE, NF_CT_STATE_NEW),
            Match::CtStatusDnat => self.ct_bits(NFT_CT_STATUS, IPS_DST_NAT),
            Match::DaddrProtoPortInSet(family, set) => {
                self.load_addr_proto_port(deps, *family);
                self.lookup(set, false);
            }
            Match::SaddrDaddrInSet(family, set) => {
                self.load_addr(deps, *family, Field::Saddr);
                let words = addr_len(*family) / 4;
                self.payload(
                    NFT_PAYLOAD_NETWORK,
                    offset(*family, Field::Daddr),
                    addr_len(*family),
                    register(words),
                );
                self.lookup(set, false);
            }
            Match::Numgen(modulus) => {
                self.numgen(*modulus);
                self.cmp(NFT_CMP_EQ, &0u32.to_ne_bytes());
            }
            Match::Daddr(ip) => {
                let full = addr_len(Family::of(*ip)) as u8 * 8;
                self.addr_match(deps, Field::Daddr, *ip, full, NFT_CMP_EQ);
            }
            Match::Saddr(ip) => {
                let full = addr_len(Family::of(*ip)) as u8 * 8;
                self.addr_match(deps, Field::Saddr, *ip, full, NFT_CMP_EQ);
            }
            Match::DaddrNotIn(net) => self.net_match(deps, Field::Daddr, net, NFT_CMP_NEQ),
            Match::SaddrNotIn(_, nets) => {
                for net in nets {
                    self.net_match(deps, Field::Saddr, net, NFT_CMP_NEQ);
                }
            }
            Match::SaddrInNet(net) => self.net_match(deps, Field::Saddr, net, NFT_CMP_EQ),
            Match::DaddrInSet(family, set) => {
                self.load_addr(deps, *family, Field::Daddr);
                self.lookup(set, false);
            }
            Match::SaddrInSet(family, set) => {
                self.load_addr(deps, *family, Field::Saddr);
                self.lookup(set, false);
            }
            Match::FibDaddrLocal => self.fib_addrtype(NFTA_FIB_F_DADDR),
            Match::FibSaddrLocal => self.fib_addrtype(NFTA_FIB_F_SADDR),
            Match::L4Proto(p) => {
                self.meta_load(NFT_META_L4PROTO, 1);
                self.cmp(NFT_CMP_EQ, &[proto_number(*p)]);
            }
            Match::Dport(port) => {
                self.payload(NFT_PAYLOAD_TRANSPORT, 2, 2, 1);
                self.cmp(NFT_CMP_EQ, &port.to_be_bytes());
            }
            Match::MarkClear(mask) => {
                self.meta_load(NFT_META_MARK, 1);
                self.bitwise(&mask.to_ne_bytes(), &[0; 4], true);
                self.cmp(NFT_CMP_EQ, &[0; 4]);
            }
        }
    }

    /// `ip daddr . meta l4proto . th dport` into registers: each part padded to 32-bit words.
    fn load_addr_proto_port(&mut self, deps: &mut Deps, family: Family) {
        self.load_addr(deps, family, Field::Daddr);
        let words = addr_len(family) / 4;
        self.meta_load(NFT_META_L4PROTO, register(words));
        self.payload(NFT_PAYLOAD_TRANSPORT, 2, 2, register(words + 1));
    }

    /// `ct KEY & BITS != 0`
    fn ct_bits(&mut self, key: u32, bits: u32) {
        self.expr("ct", |b| {
            b.u32(2, key); // NFTA_CT_KEY
            b.u32(1, 1); // NFTA_CT_DREG
        });
        self.bitwise(&bits.to_ne_bytes(), &[0; 4], false);
        self.cmp(NFT_CMP_NEQ, &[0; 4]);
    }

    fn stmt(&mut self, deps: &mut Deps, s: &Stmt) {
        match s {
            Stmt::Verdict(v) => self.immediate_verdict(v),
            Stmt::VmapAddrProtoPort(family, map) => {
                self.load_addr_proto_port(deps, *family);
                self.lookup(map, true);
            }
            Stmt::VmapProtoPort(map) => {
                self.meta_load(NFT_META_L4PROTO, register(0));
                self.payload(NFT_PAYLOAD_TRANSPORT, 2, 2, register(1));
                self.lookup(map, true);
            }
            Stmt::NumgenDnat(..) => unreachable!("add_rule expands a cascade into plain rules"),
            Stmt::MarkOr(m) => {
                self.meta_load(NFT_META_MARK, 1);
                self.bitwise(&(!m).to_ne_bytes(), &m.to_ne_bytes(), true);
                self.meta_set(NFT_META_MARK);
            }
            Stmt::MarkXor(m) => {
                self.meta_load(NFT_META_MARK, 1);
                self.bitwise(&u32::MAX.to_ne_bytes(), &m.to_ne_bytes(), true);
                self.meta_set(NFT_META_MARK);
            }
            Stmt::UpdateSaddr(family, set) => {
                self.load_addr(deps, *family, Field::Saddr);
                self.expr("dynset", |b| {
                    b.u32(4, 1); // NFTA_DYNSET_SREG_KEY
                    b.u32(3, NFT_DYNSET_OP_UPDATE); // NFTA_DYNSET_OP
                    b.str(1, set); // NFTA_DYNSET_SET_NAME
                });
            }
            Stmt::Dnat(to) => {
                self.immediate_value(1, &octets(to.ip()));
                self.immediate_value(2, &to.port().to_be_bytes());
                let family = match Family::of(to.ip()) {
                    Family::V4 => NFPROTO_IPV4,
                    Family::V6 => NFPROTO_IPV6,
                };
                self.expr("nat", |b| {
                    b.u32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                    b.u32(2, u32::from(family)); // NFTA_NAT_FAMILY
                    b.u32(3, 1); // NFTA_NAT_REG_ADDR_MIN
                    b.u32(5, 2); // NFTA_NAT_REG_PROTO_MIN
                    b.u32(7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
                });
            }
            Stmt::Masquerade => self.expr("masq", |b| {
                b.u32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY); // NFTA_MASQ_FLAGS
            }),
            Stmt::RejectTcpReset => self.reject(NFT_REJECT_TCP_RST, 0),
            Stmt::RejectPortUnreachable => {
                self.reject(NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH)
            }
        }
    }

    fn op(&mut self, op: &Op<'_>) {
        match op {
            Op::AddChain { name, hook } => self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
                b.str(NFTA_CHAIN_TABLE, TABLE);
                b.str(NFTA_CHAIN_NAME, name);
                if let Some(hook) = hook {
                    let ty = match hook.chain_type {
                        ChainType::Filter => "filter",
                        ChainType::Nat => "nat",
                    };
                    let num = match hook.hook {
                        HookPoint::Prerouting => 0,
                        HookPoint::Input => 1,
                        HookPoint::Forward => 2,
                        HookPoint::Output => 3,
                        HookPoint::Postrouting => 4,
                    };
                    b.str(NFTA_CHAIN_TYPE, ty);
                    b.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                    b.nest(NFTA_CHAIN_HOOK, |b| {
                        b.u32(NFTA_HOOK_HOOKNUM, num);
                        b.u32(NFTA_HOOK_PRIORITY, hook.priority as u32);
                    });
                }
            }),
            Op::AddSet { name, kind } => {
                let id = self.set_id();
                self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, |b| add_set(b, name, kind, id));
            }
            Op::FlushChain(name) => self.nft(NFT_MSG_DELRULE, 0, |b| {
                b.str(NFTA_RULE_TABLE, TABLE);
                b.str(NFTA_RULE_CHAIN, name);
            }),
            Op::AddRule { chain, rule } => self.add_rule(chain, rule),
            Op::DeleteElements { set, elements } => {
                let keys: Vec<(Vec<u8>, Option<&Verdict>)> =
                    elements.iter().map(|e| (key(e), None)).collect();
                self.elements(NFT_MSG_DELSETELEM, 0, set, &keys);
            }
            Op::AddElements { set, elements } => {
                let items: Vec<(Vec<u8>, Option<&Verdict>)> = elements
                    .iter()
                    .map(|e| match e {
                        Element::Addr(_) | Element::Pair(_) | Element::Key(_) => (key(e), None),
                        Element::Map(_, v) => (key(e), Some(*v)),
                    })
                    .collect();
                self.elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, set, &items);
            }
            Op::DeleteChain(name) => self.nft(NFT_MSG_DELCHAIN, 0, |b| {
                b.str(NFTA_CHAIN_TABLE, TABLE);
                b.str(NFTA_CHAIN_NAME, name);
            }),
            Op::DeleteSet { name, .. } => self.nft(NFT_MSG_DELSET, 0, |b| {
                b.str(NFTA_SET_TABLE, TABLE);
                b.str(NFTA_SET_NAME, name);
            }),
        }
    }

    fn add_rule(&mut self, chain: &str, rule: &Rule) {
        for rule in expand(rule) {
            self.rule(chain, |b, deps| {
                for m in &rule.matches {
                    b.match_(deps, m);
                }
                for s in &rule.stmts {
                    b.stmt(deps, s);
                }
            });
        }
    }
}

fn add_set(b: &mut Batch, name: &str, kind: &SetKind, id: u32) {
    let concat = |types: &[u32]| types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t);
    let addr_type = |f: &Family| match f {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    };
    // (flags, key type, key length, verdict map, timeout in seconds)
    let (flags, key_type, key_len, map, timeout) = match kind {
        SetKind::Addrs(f) => (0, addr_type(f), addr_len(*f), false, None),
        SetKind::AddrPairs(f) => (
            0,
            concat(&[addr_type(f), addr_type(f)]),
            addr_len(*f) * 2,
            false,
            None,
        ),
        SetKind::AddrProtoPortSet(f) => (
            0,
            concat(&[addr_type(f), TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            addr_len(*f) + 8,
            false,
            None,
        ),
        SetKind::Affinity { family, timeout } => (
            NFT_SET_TIMEOUT | NFT_SET_EVAL,
            addr_type(family),
            addr_len(*family),
            false,
            Some(*timeout),
        ),
        // Concatenated keys: each part takes whole 32-bit words (proto 1 → 4, port 2 → 4).
        SetKind::AddrProtoPortMap(f) => (
            NFT_SET_MAP,
            concat(&[addr_type(f), TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            addr_len(*f) + 8,
            true,
            None,
        ),
        SetKind::ProtoPortMap => (
            NFT_SET_MAP,
            concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            8,
            true,
            None,
        ),
    };
    b.str(NFTA_SET_TABLE, TABLE);
    b.str(NFTA_SET_NAME, name);
    b.u32(NFTA_SET_FLAGS, flags);
    b.u32(NFTA_SET_KEY_TYPE, key_type);
    b.u32(NFTA_SET_KEY_LEN, key_len as u32);
    if map {
        b.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
        b.u32(NFTA_SET_DATA_LEN, 0);
    }
    b.u32(NFTA_SET_ID, id);
    if let Some(seconds) = timeout {
        b.attr(NFTA_SET_TIMEOUT, &(u64::from(seconds) * 1000).to_be_bytes());
    }
    let udata = match kind {
        SetKind::Addrs(_) | SetKind::Affinity { .. } => udata(Udata::Addr),
        SetKind::AddrPairs(_) | SetKind::AddrProtoPortSet(_) => udata(Udata::ConcatSet),
        SetKind::AddrProtoPortMap(_) | SetKind::ProtoPortMap => udata(Udata::ConcatMap),
    };
    b.attr(NFTA_SET_USERDATA, &udata);
}

/// The userdata nft 1.0.6 gives a set, describing it for `nft list`.
#[derive(Clone, Copy)]
enum Udata {
    /// An address key, big endian.
    Addr,
    /// A `type a . b` set.
    ConcatSet,
    /// A `type a . b . c : verdict` map.
    ConcatMap,
}

/// libnftnl set userdata TLVs (type u8, length u8, host-endian u32 values): KEYBYTEORDER, for maps
/// DATABYTEORDER, for a concatenated key a `typeof` (KEY_TYPEOF = concat expression) without
/// sub-expressions, and for maps DATA_INTERVAL = 0. Byte orders: 0 invalid (concatenation), 2 big
/// endian.
fn udata(kind: Udata) -> Vec<u8> {
    let tlv = |out: &mut Vec<u8>, ty: u8, v: u32| {
        out.extend_from_slice(&[ty, 4]);
        out.extend_from_slice(&v.to_ne_bytes());
    };
    let mut out = Vec::with_capacity(28);
    let map = match kind {
        Udata::Addr => {
            tlv(&mut out, 0, 2);
            return out;
        }
        Udata::ConcatSet => false,
        Udata::ConcatMap => true,
    };
    tlv(&mut out, 0, 0);
    if map {
        tlv(&mut out, 1, 0);
    }
    out.extend_from_slice(&[3, 8]);
    tlv(&mut out, 0, 13);
    out.extend_from_slice(&[1, 0]);
    if map {
        tlv(&mut out, 6, 0);
    }
    out
}

/// A set element's key as the kernel stores it: concatenation parts padded to 32-bit words.
fn key(element: &Element<'_>) -> Vec<u8> {
    match element {
        Element::Addr(ip) => octets(**ip),
        Element::Pair(ip) => [octets(**ip), octets(**ip)].concat(),
        Element::Map(k, _) | Element::Key(k) => {
            let mut out = k.addr.map(octets).unwrap_or_default();
            out.extend_from_slice(&[proto_number(k.protocol), 0, 0, 0]);
            out.extend_from_slice(&k.port.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out
        }
    }
}

/// Encodes `tx` into one batch whose first message has sequence number `seq`.
fn encode(tx: &Transaction<'_>, seq: u32) -> Result<Batch, Error> {
    let mut b = Batch {
        buf: Vec::with_capacity(4096 + tx.ops.len() * 256),
        seq,
        first_seq: seq.wrapping_add(1),
        owners: Vec::new(),
        acked: Vec::new(),
        ack_each: !tx.full,
        last_message: 0,
        current_op: None,
        next_set_id: 0,
        oversized: false,
    };
    let (flags, res_id) = (NLM_F_REQUEST, NFNL_SUBSYS_NFTABLES);
    b.message(NFNL_MSG_BATCH_BEGIN, flags, 0, res_id, |_| {});
    if tx.full {
        b.replace_table();
    }
    for (i, op) in tx.ops.iter().enumerate() {
        b.current_op = Some(i);
        b.op(op);
    }
    if tx.full {
        b.ack_last();
    }
    b.message(NFNL_MSG_BATCH_END, flags, 0, res_id, |_| {});
    if b.oversized {
        return Err(Error::Unsupported(
            "an attribute longer than netlink's 64 KiB limit".to_owned(),
        ));
    }
    Ok(b)
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
