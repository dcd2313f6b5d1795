//! Byte-exact checks of the encoding against the messages nft 1.0.6 itself sends (captured with
//! `nft --debug=mnl -f` and rebuilt into bytes; host byte order is little endian there). They
//! need no kernel; `net/tests/netlink.rs` checks the same against the kernel.

use std::net::IpAddr;

use super::*;
use crate::proxy::ruleset::{Hook, MapKey, Pick};

/// The attributes (after nlmsghdr and nfgenmsg) of each nf_tables message of `tx`'s batch.
fn bodies(tx: &Transaction<'_>) -> Vec<String> {
    let all: Vec<String> = messages(tx)
        .iter()
        .map(|m| m[20..].iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    // Drop the batch delimiters.
    all[1..all.len() - 1].to_vec()
}

/// Each netlink message of `tx`'s batch, headers included, delimiters included.
fn messages(tx: &Transaction<'_>) -> Vec<Vec<u8>> {
    let batch = encode(tx, 100).expect("encodable");
    let mut out = Vec::new();
    let mut rest = batch.buf.as_slice();
    while rest.len() >= 20 {
        let len = u32::from_ne_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    out
}

fn hex(parts: &[&str]) -> String {
    parts.concat()
}

fn tx(ops: Vec<Op<'_>>) -> Transaction<'_> {
    Transaction { full: false, ops }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// `ip netns exec x nft --debug=mnl -f -` of `add chain` / `add set` / `add map` for the kinds
/// the ruleset uses, in this order (nft numbers new sets from 1, as [`Batch`] does).
const CHAINS_AND_SETS: &[&[&str]] = &[
    &[
        "0a0001006e6f6475730000001100030066696c7465722d696e707574000000000b00070066696c7465720000",
        "080005000000000114000480080001000000000108000200ffffff92",
    ],
    &[
        "0a0001006e6f6475730000000f0003006e61742d6f75747075740000080007006e6174000800050000000001",
        "14000480080001000000000308000200ffffff9c",
    ],
    &["0a0001006e6f6475730000000600030063000000"],
    &["0a0001006e6f6475730000000600030064000000"],
    &[
        "0a0001006e6f6475730000000700020073340000080003000000000008000400000000070800050000000004",
        "08000a00000000010a000d000004020000000000",
    ],
    &[
        "0a0001006e6f6475730000000700020073360000080003000000000008000400000000080800050000000010",
        "08000a00000000020a000d000004020000000000",
    ],
    &[
        "0a0001006e6f6475730000000700020061340000080003000000003008000400000000070800050000000004",
        "08000a00000000030c000b000000000000a4cb800a000d000004020000000000",
    ],
    &[
        "0a0001006e6f6475730000000700020061360000080003000000003008000400000000080800050000000010",
        "08000a00000000040c000b00000000000000ea600a000d000004020000000000",
    ],
    &[
        "0a0001006e6f647573000000070002006d3400000800030000000008080004000000730d080005000000000c",
        "08000600ffffff00080007000000000008000a000000000520000d0000040000000001040000000003080004",
        "0d0000000100060400000000",
    ],
    &[
        "0a0001006e6f647573000000070002006d3600000800030000000008080004000000830d0800050000000018",
        "08000600ffffff00080007000000000008000a000000000620000d0000040000000001040000000003080004",
        "0d0000000100060400000000",
    ],
    &[
        "0a0001006e6f64757300000007000200707000000800030000000008080004000000030d0800050000000008",
        "08000600ffffff00080007000000000008000a000000000720000d0000040000000001040000000003080004",
        "0d0000000100060400000000",
    ],
];

#[test]
fn chains_and_sets_are_encoded_as_nft_does() {
    let hook = |chain_type, hook, priority| Hook {
        chain_type,
        hook,
        priority,
    };
    let input = hook(ChainType::Filter, HookPoint::Input, -110);
    let output = hook(ChainType::Nat, HookPoint::Output, -100);
    let kinds = [
        ("s4", SetKind::Addrs(Family::V4)),
        ("s6", SetKind::Addrs(Family::V6)),
        (
            "a4",
            SetKind::Affinity {
                family: Family::V4,
                timeout: 10800,
            },
        ),
        (
            "a6",
            SetKind::Affinity {
                family: Family::V6,
                timeout: 60,
            },
        ),
        ("m4", SetKind::AddrProtoPortMap(Family::V4)),
        ("m6", SetKind::AddrProtoPortMap(Family::V6)),
        ("pp", SetKind::ProtoPortMap),
    ];
    let mut ops = vec![
        Op::AddChain {
            name: "filter-input",
            hook: Some(&input),
        },
        Op::AddChain {
            name: "nat-output",
            hook: Some(&output),
        },
        Op::AddChain {
            name: "c",
            hook: None,
        },
        Op::AddChain {
            name: "d",
            hook: None,
        },
    ];
    ops.extend(kinds.iter().map(|(name, kind)| Op::AddSet { name, kind }));
    let expected: Vec<String> = CHAINS_AND_SETS.iter().map(|p| hex(p)).collect();
    assert_eq!(bodies(&tx(ops)), expected);
}

/// The rules of [`rules`], as nft sends them.
const RULES: &[&[&str]] = &[
    &[
        "0a0001006e6f6475730000000600020063000000a002048024000180090001006d6574610000000014000280",
        "080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200",
        "000000000c0003800500010002000000340001800c0001007061796c6f616400240002800800010000000001",
        "0800020000000001080003000000001008000400000000042c00018008000100636d70002000028008000100",
        "0000000108000200000000000c000380080001000a62001424000180090001006d6574610000000014000280",
        "080002000000001008000100000000012c00018008000100636d700020000280080001000000000108000200",
        "000000000c0003800500010006000000340001800c0001007061796c6f616400240002800800010000000001",
        "0800020000000002080003000000000208000400000000022c00018008000100636d70002000028008000100",
        "0000000108000200000000000c0003800600010000500000340001800c0001007061796c6f61640024000280",
        "08000100000000010800020000000001080003000000000c08000400000000022c00018008000100636d7000",
        "20000280080001000000000108000200000000010c000380060001000a630000340001800c0001007061796c",
        "6f6164002400028008000100000000010800020000000001080003000000000c080004000000000444000180",
        "0c0001006269747769736500340002800800010000000001080002000000000108000300000000040c000480",
        "08000100fffc00000c00058008000100000000002c00018008000100636d7000200002800800010000000001",
        "08000200000000010c000380080001000a640000380001800e000100696d6d65646961746500000024000280",
        "0800010000000000180002801400028008000100fffffffd0600020078000000",
    ],
    &[
        "0a0001006e6f6475730000000600020063000000cc0004802000018007000100637400001400028008000200",
        "000000000800010000000001440001800c000100626974776973650034000280080001000000000108000200",
        "0000000108000300000000040c00048008000100080000000c00058008000100000000002c00018008000100",
        "636d700020000280080001000000000108000200000000010c0003800800010000000000380001800e000100",
        "696d6d656469617465000000240002800800010000000000180002801400028008000100fffffffd06000200",
        "78000000",
    ],
    &[
        "0a0001006e6f6475730000000600020063000000d000048024000180090001006d6574610000000014000280",
        "080002000000000308000100000000014c0001800c00010062697477697365003c0002800800010000000001",
        "0800020000000001080006000000000008000300000000040c00048008000100004000000c00058008000100",
        "000000002c00018008000100636d700020000280080001000000000108000200000000000c00038008000100",
        "00000000300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c000280",
        "08000100fffffffb",
    ],
    &[
        "0a0001006e6f64757300000006000200630000009800048024000180090001006d6574610000000014000280",
        "080002000000000308000100000000014c0001800c00010062697477697365003c0002800800010000000001",
        "0800020000000001080006000000000008000300000000040c00048008000100ffbfffff0c00058008000100",
        "0040000024000180090001006d657461000000001400028008000200000000030800030000000001",
    ],
    &[
        "0a0001006e6f64757300000006000200630000009800048024000180090001006d6574610000000014000280",
        "080002000000000308000100000000014c0001800c00010062697477697365003c0002800800010000000001",
        "0800020000000001080006000000000008000300000000040c00048008000100ffffffff0c00058008000100",
        "0040000024000180090001006d657461000000001400028008000200000000030800030000000001",
    ],
    &[
        "0a0001006e6f6475730000000600020063000000a80104802800018008000100666962001c00028008000300",
        "00000001080002000000000308000100000000012c00018008000100636d7000200002800800010000000001",
        "08000200000000000c000380080001000200000024000180090001006d657461000000001400028008000200",
        "0000000f08000100000000012c00018008000100636d70002000028008000100000000010800020000000000",
        "0c000380050001000a000000340001800c0001007061796c6f61640024000280080001000000000108000200",
        "00000001080003000000000808000400000000105c0001800c00010062697477697365004c00028008000100",
        "00000001080002000000000108000300000000101800048014000100fffffffffffffff00000000000000000",
        "1800058014000100000000000000000000000000000000003800018008000100636d70002c00028008000100",
        "0000000108000200000000001800038014000100fd000099000000000000000000000000380001800e000100",
        "696d6d656469617465000000240002800800010000000000180002801400028008000100fffffffc06000200",
        "78000000",
    ],
    &[
        "0a0001006e6f647573000000060002006300000044010480340001800b0001006e756d67656e000024000280",
        "08000100000000010800020000000002080003000000000108000400000000002c00018008000100636d7000",
        "20000280080001000000000108000200000000000c000380080001000000000024000180090001006d657461",
        "0000000014000280080002000000001008000100000000012c00018008000100636d70002000028008000100",
        "0000000108000200000000000c00038005000100060000002c0001800e000100696d6d656469617465000000",
        "1800028008000100000000010c000280080001000a0000012c0001800e000100696d6d656469617465000000",
        "1800028008000100000000020c000280060001000050000038000180080001006e6174002c00028008000100",
        "000000010800020000000002080003000000000108000500000000020800070000000002",
    ],
    &[
        "0a0001006e6f64757300000006000200630000007800048024000180090001006d6574610000000014000280",
        "080002000000001008000100000000012c00018008000100636d700020000280080001000000000108000200",
        "000000000c0003800500010006000000240001800b00010072656a6563740000140002800800010000000001",
        "0500020000000000",
    ],
    &[
        "0a0001006e6f647573000000060002006300000028000480240001800b00010072656a656374000014000280",
        "08000100000000020500020001000000",
    ],
    &[
        "0a0001006e6f6475730000000f0002006e61742d6f75747075740000f000048024000180090001006d657461",
        "0000000014000280080002000000001008000100000000012c00018008000100636d70002000028008000100",
        "0000000108000200000000000c0003800500010011000000380001800e000100696d6d656469617465000000",
        "2400028008000100000000011800028014000100fd0000000000000000000000000000072c0001800e000100",
        "696d6d6564696174650000001800028008000100000000020c0002800600010020fb00003800018008000100",
        "6e6174002c0002800800010000000001080002000000000a0800030000000001080005000000000208000700",
        "00000002",
    ],
    &[
        "0a0001006e6f64757300000009000200706f737400000000200004801c000180090001006d61737100000000",
        "0c0002800800010000000010",
    ],
];

/// One rule per expression shape: (chain, rule); nft's text for each is in the comments.
fn rules() -> Vec<(&'static str, Rule)> {
    let rule = |matches, stmts| Rule { matches, stmts };
    let jump = Stmt::Verdict(Verdict::Jump("x".into()));
    let goto = Stmt::Verdict(Verdict::Goto("x".into()));
    vec![
        // ip daddr 10.98.0.20 meta l4proto tcp th dport 80 ip saddr != 10.99.0.0/16
        //   ip saddr != 10.100.0.0/14 jump x
        (
            "c",
            rule(
                vec![
                    Match::Daddr(ip("10.98.0.20")),
                    Match::L4Proto(Protocol::Tcp),
                    Match::Dport(80),
                    Match::SaddrNotIn(
                        Family::V4,
                        vec![
                            "10.99.0.0/16".parse().expect("net"),
                            "10.100.0.0/14".parse().expect("net"),
                        ],
                    ),
                ],
                vec![jump.clone()],
            ),
        ),
        // ct state new jump x
        ("c", rule(vec![Match::CtStateNew], vec![jump])),
        // meta mark & 0x00004000 == 0 return
        (
            "c",
            rule(
                vec![Match::MarkClear(0x4000)],
                vec![Stmt::Verdict(Verdict::Return)],
            ),
        ),
        // meta mark set meta mark | 0x00004000
        ("c", rule(vec![], vec![Stmt::MarkOr(0x4000)])),
        // meta mark set meta mark ^ 0x00004000
        ("c", rule(vec![], vec![Stmt::MarkXor(0x4000)])),
        // fib saddr type local ip6 saddr fd00:99::/60 goto x
        (
            "c",
            rule(
                vec![
                    Match::FibSaddrLocal,
                    Match::SaddrInNet("fd00:99::/60".parse().expect("net")),
                ],
                vec![goto],
            ),
        ),
        // numgen random mod 2 0 meta l4proto tcp dnat ip to 10.0.0.1:80 (a cascade's first rule)
        (
            "c",
            rule(
                vec![Match::Numgen(2), Match::L4Proto(Protocol::Tcp)],
                vec![Stmt::Dnat("10.0.0.1:80".parse().expect("socket address"))],
            ),
        ),
        // meta l4proto tcp reject with tcp reset
        (
            "c",
            rule(
                vec![Match::L4Proto(Protocol::Tcp)],
                vec![Stmt::RejectTcpReset],
            ),
        ),
        // reject with icmpx port-unreachable
        ("c", rule(vec![], vec![Stmt::RejectPortUnreachable])),
        // meta l4proto udp dnat ip6 to [fd00::7]:8443
        (
            "nat-output",
            rule(
                vec![Match::L4Proto(Protocol::Udp)],
                vec![Stmt::Dnat(
                    "[fd00::7]:8443".parse().expect("socket address"),
                )],
            ),
        ),
        // masquerade fully-random
        ("post", rule(vec![], vec![Stmt::Masquerade])),
    ]
}

#[test]
fn rules_are_encoded_as_nft_does() {
    let rules = rules();
    for ((chain, rule), expected) in rules.iter().zip(RULES) {
        let got = bodies(&tx(vec![Op::AddRule { chain, rule }]));
        assert_eq!(got[0], hex(expected), "{rule}");
    }
}

#[test]
fn a_numgen_cascade_is_one_rule_per_pick() {
    let picks: Vec<Pick> = (1..=3)
        .map(|i| Pick {
            to: format!("10.0.0.{i}:80").parse().expect("socket address"),
            affinity: None,
        })
        .collect();
    let rule = Rule {
        matches: vec![],
        stmts: vec![Stmt::NumgenDnat(Protocol::Tcp, picks)],
    };
    let got = bodies(&tx(vec![Op::AddRule {
        chain: "c",
        rule: &rule,
    }]));
    assert_eq!(got.len(), 3);
    // The first is the rule nft sends for `numgen random mod 3 0 ...` (modulus attribute 2, big
    // endian, counts down: 3, 2, and no numgen in the last rule).
    assert!(got[0].contains("0800020000000003"), "{}", got[0]);
    assert!(got[1].contains("0800020000000002"), "{}", got[1]);
    assert!(!got[2].contains("6e756d67656e"), "{}", got[2]);
}

#[test]
fn map_keys_are_padded_to_registers() {
    let key4 = MapKey {
        addr: Some(ip("10.98.0.20")),
        protocol: Protocol::Tcp,
        port: 80,
    };
    let nodeport = MapKey {
        addr: None,
        protocol: Protocol::Tcp,
        port: 30080,
    };
    let v = Verdict::Drop;
    // As nft sends `10.98.0.20 . tcp . 80` and `tcp . 30080`.
    assert_eq!(
        key(&Element::Map(&key4, &v)),
        [10, 98, 0, 20, 6, 0, 0, 0, 0, 80, 0, 0]
    );
    assert_eq!(
        key(&Element::Map(&nodeport, &v)),
        [6, 0, 0, 0, 0x75, 0x80, 0, 0]
    );
}

#[test]
fn large_element_lists_are_split_into_messages() {
    let addrs: Vec<IpAddr> = (0..20_000u32)
        .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
        .collect();
    let elements = addrs.iter().map(Element::Addr).collect();
    let got = bodies(&tx(vec![Op::AddElements {
        set: "s4",
        elements,
    }]));
    assert!(got.len() > 1, "one message for 20k elements");
    assert!(got.iter().all(|b| b.len() / 2 < 64 * 1024));
}

/// `nft --debug=mnl -f -` of `add table inet nodus`, `delete table inet nodus`,
/// `add table inet nodus { comment "nodus service proxy" ; }`.
const REPLACE_TABLE: &[&[&str]] = &[
    &["0a0001006e6f6475730000000800020000000000"],
    &["0a0001006e6f647573000000"],
    &[
        "0a0001006e6f6475730000000800020000000000",
        "1a000600",
        "00146e6f6475732073657276696365207072",
        "6f78790000",
        "00",
    ],
];

/// nlmsg type and flags of each message of `tx`'s batch, delimiters included.
fn headers(tx: &Transaction<'_>) -> Vec<(u16, u16)> {
    messages(tx)
        .iter()
        .map(|m| {
            (
                u16::from_ne_bytes([m[4], m[5]]),
                u16::from_ne_bytes([m[6], m[7]]),
            )
        })
        .collect()
}

#[test]
fn a_full_replace_recreates_the_table_as_nft_does() {
    let chain = Op::AddChain {
        name: "services",
        hook: None,
    };
    let full = Transaction {
        full: true,
        ops: vec![chain.clone()],
    };
    let got = bodies(&full);
    let want: Vec<String> = REPLACE_TABLE.iter().map(|parts| hex(parts)).collect();
    assert_eq!(got[..3], want[..]);
    assert_eq!(got[3..], bodies(&tx(vec![chain]))[..]);
}

#[test]
fn a_full_replace_asks_only_its_last_message_for_an_ack() {
    let full = Transaction {
        full: true,
        ops: vec![
            Op::AddChain {
                name: "a",
                hook: None,
            },
            Op::AddChain {
                name: "b",
                hook: None,
            },
        ],
    };
    let table = |msg: u16| (NFNL_SUBSYS_NFTABLES << 8) | msg;
    let flags: Vec<(u16, u16)> = headers(&full);
    assert_eq!(
        flags,
        vec![
            (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST),
            (table(NFT_MSG_NEWTABLE), NLM_F_REQUEST | NLM_F_CREATE),
            (table(NFT_MSG_DELTABLE), NLM_F_REQUEST),
            (table(NFT_MSG_NEWTABLE), NLM_F_REQUEST | NLM_F_CREATE),
            (table(NFT_MSG_NEWCHAIN), NLM_F_REQUEST | NLM_F_CREATE),
            (
                table(NFT_MSG_NEWCHAIN),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
            ),
            (NFNL_MSG_BATCH_END, NLM_F_REQUEST),
        ]
    );
    // An update asks every message, so that each refusal or silence is told apart.
    let update = headers(&tx(full.ops.clone()));
    assert!(
        update[1..update.len() - 1]
            .iter()
            .all(|(_, f)| f & NLM_F_ACK != 0)
    );
}
