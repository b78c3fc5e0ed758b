//! Scenario tests as data: `protocols/testdata/pb/*.txt` drive one node through messages,
//! timers and requests, and each command's printed effects are compared with the file.
//!
//! A file opens with `#` comment lines saying what it tests. Then come blocks: a command,
//! a line `----`, the expected output (one line per effect, or `ok` for none), and a
//! blank line. Commands:
//!
//! ```text
//! start n0 [variant]                      a fresh node (n0 is the view service)
//! restart                                 crash, then recover from the records so far
//! deliver n1 ping <installed> <state>     a Ping (state: true or false)
//! deliver n0 view <number> <p|-> <b|->    a ViewReply
//! deliver n1 transfer <number> <p> <b>    a Transfer of an empty store
//! deliver n2 transfer-ack <number>
//! deliver n1 forward <view> <number> <value>   a batch of one append by client c9
//! deliver n2 forward-ack <view> <number>
//! fire tick | ping | retransmit
//! request c1 get-view | append <sequence> <value> | get <sequence>
//! state                                   what the node knows
//! ```
//!
//! Run with `REWRITE=1` to write the actual output into the files instead of comparing
//! (then read the diff before committing it).

use super::*;
use synod_core::kv::KvCommand;
use synod_core::node::Effect;
use synod_core::rng::Rng;
use synod_core::time::Time;

const MEMBERS: [NodeId; 4] = [VIEW_SERVICE, NodeId(1), NodeId(2), NodeId(3)];
/// The key every scripted command touches.
const KEY: &str = "k";
/// The client whose commands `forward` carries.
const FORWARD_CLIENT: ClientId = ClientId(9);

/// The node a scenario drives and the records it has made durable so far.
struct Subject {
    id: NodeId,
    variant: PbVariant,
    node: PbNode,
    records: Vec<PbRecord>,
}

impl Subject {
    fn run(&mut self, handler: impl FnOnce(&mut PbNode, &mut Context<PbNode>)) -> String {
        let mut rng = Rng::new(7);
        let appended = self.records.len() as u64;
        let mut ctx = Context::with_records(self.id, &MEMBERS, Time::ZERO, &mut rng, appended);
        handler(&mut self.node, &mut ctx);
        let effects = ctx.into_effects();
        for effect in &effects {
            if let Effect::Persist { record } | Effect::Checkpoint { record, .. } = effect {
                self.records.push(record.clone());
            }
        }
        if effects.is_empty() {
            return "ok".to_string();
        }
        effects
            .iter()
            .map(render_effect)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn render_message(message: &PbMessage) -> String {
    match message {
        PbMessage::Ping {
            installed_view,
            holds_state,
        } => format!("ping installed {installed_view} state {holds_state}"),
        PbMessage::ViewReply { view } => format!("view {view}"),
        PbMessage::Transfer { view, store } => {
            format!("transfer {view} {KEY}={:?}", store.map().get(KEY))
        }
        PbMessage::TransferAck { view_number } => format!("transfer-ack {view_number}"),
        PbMessage::Forward {
            view_number,
            forward_number,
            commands,
        } => {
            let commands: Vec<String> = commands
                .iter()
                .map(|command| {
                    format!(
                        "{}#{} {:?}",
                        command.client, command.sequence, command.command
                    )
                })
                .collect();
            format!(
                "forward {view_number} #{forward_number} [{}]",
                commands.join(", ")
            )
        }
        PbMessage::ForwardAck {
            view_number,
            forward_number,
        } => format!("forward-ack {view_number} #{forward_number}"),
    }
}

fn render_effect(effect: &Effect<PbNode>) -> String {
    let after = |records: u64| {
        if records == 0 {
            String::new()
        } else {
            format!(" (after record {records})")
        }
    };
    match effect {
        Effect::Send {
            to,
            message,
            records_required,
        } => format!(
            "send {to} {}{}",
            render_message(message),
            after(*records_required)
        ),
        Effect::Reply {
            client,
            response,
            records_required,
        } => {
            let response = match response {
                PbResponse::View(view) => format!("view {view}"),
                PbResponse::Reply { sequence, result } => format!("#{sequence} {result:?}"),
            };
            format!("reply {client} {response}{}", after(*records_required))
        }
        Effect::SetTimer { timer, .. } => format!("set-timer {timer:?}"),
        Effect::CancelTimer { timer } => format!("cancel-timer {timer:?}"),
        Effect::Persist { record } => format!("persist {}", render_record(record)),
        Effect::Checkpoint { record, .. } => format!("checkpoint {}", render_record(record)),
        Effect::Sync => "sync".to_string(),
    }
}

fn render_record(record: &PbRecord) -> String {
    match record {
        PbRecord::View(view) => format!("view {view}"),
        PbRecord::Acknowledged(number) => format!("acknowledged {number}"),
    }
}

fn render_state(node: &PbNode) -> String {
    if let Some(service) = node.as_view_service() {
        return format!(
            "view service at {}, acknowledged {}",
            service.view(),
            service.acknowledged()
        );
    }
    let server = node
        .as_server()
        .expect("a node is a view service or a server");
    let serving = server
        .serving_view()
        .map_or("not serving".to_string(), |view| format!("serving {view}"));
    let store = server.store().map_or("no store".to_string(), |store| {
        format!("{KEY}={:?}", store.map().get(KEY))
    });
    format!(
        "server at {}, installed {}, {serving}, {store}",
        server.view(),
        server.installed_view()
    )
}

fn node_id(text: &str) -> Result<NodeId, String> {
    text.strip_prefix('n')
        .and_then(|number| number.parse().ok())
        .map(NodeId)
        .ok_or_else(|| format!("{text:?} is not a node like n1"))
}

fn optional_node(text: &str) -> Result<Option<NodeId>, String> {
    if text == "-" {
        Ok(None)
    } else {
        node_id(text).map(Some)
    }
}

fn number(text: Option<&&str>) -> Result<u64, String> {
    let text = text.ok_or("a number is missing")?;
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

fn word<'a>(words: &[&'a str], index: usize) -> Result<&'a str, String> {
    words
        .get(index)
        .copied()
        .ok_or_else(|| format!("argument {index} is missing"))
}

fn parse_message(words: &[&str]) -> Result<PbMessage, String> {
    let view_at = |index: usize| -> Result<View, String> {
        Ok(View {
            number: number(words.get(index))?,
            primary: optional_node(word(words, index + 1)?)?,
            backup: optional_node(word(words, index + 2)?)?,
        })
    };
    Ok(match word(words, 0)? {
        "ping" => PbMessage::Ping {
            installed_view: number(words.get(1))?,
            holds_state: word(words, 2)? == "true",
        },
        "view" => PbMessage::ViewReply { view: view_at(1)? },
        "transfer" => PbMessage::Transfer {
            view: view_at(1)?,
            store: SessionKv::new(),
        },
        "transfer-ack" => PbMessage::TransferAck {
            view_number: number(words.get(1))?,
        },
        "forward" => {
            let forward_number = number(words.get(2))?;
            PbMessage::Forward {
                view_number: number(words.get(1))?,
                forward_number,
                commands: vec![SessionCommand {
                    client: FORWARD_CLIENT,
                    sequence: forward_number,
                    acknowledged_below: forward_number,
                    command: KvCommand::Append {
                        key: KEY.to_string(),
                        value: word(words, 3)?.to_string(),
                    },
                }],
            }
        }
        "forward-ack" => PbMessage::ForwardAck {
            view_number: number(words.get(1))?,
            forward_number: number(words.get(2))?,
        },
        other => return Err(format!("unknown message {other:?}")),
    })
}

fn parse_request(words: &[&str]) -> Result<PbRequest, String> {
    let command = match word(words, 0)? {
        "get-view" => return Ok(PbRequest::GetView),
        "append" => KvCommand::Append {
            key: KEY.to_string(),
            value: word(words, 2)?.to_string(),
        },
        "get" => KvCommand::Get {
            key: KEY.to_string(),
        },
        other => return Err(format!("unknown request {other:?}")),
    };
    let sequence = number(words.get(1))?;
    Ok(PbRequest::Command(KvRequest {
        sequence,
        acknowledged_below: sequence,
        command,
    }))
}

fn variant_named(name: &str) -> Result<PbVariant, String> {
    PbVariant::ALL
        .into_iter()
        .find(|variant| variant.name() == name)
        .ok_or_else(|| format!("unknown variant {name:?}"))
}

/// Runs one command on the subject (creating it on `start`) and returns its output.
fn execute(subject: &mut Option<Subject>, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let command = word(&words, 0)?;
    if command == "start" {
        let id = node_id(word(&words, 1)?)?;
        let variant = match words.get(2) {
            Some(name) => variant_named(name)?,
            None => PbVariant::Correct,
        };
        let mut started = Subject {
            id,
            variant,
            node: PbNode::new(id, variant),
            records: Vec::new(),
        };
        let output = started.run(|node, ctx| node.on_start(ctx));
        *subject = Some(started);
        return Ok(output);
    }
    let subject = subject.as_mut().ok_or("start a node first")?;
    match command {
        "restart" => {
            subject.node = PbNode::new(subject.id, subject.variant);
            let records = subject.records.clone();
            Ok(subject.run(|node, ctx| node.on_recover(records, ctx)))
        }
        "deliver" => {
            let from = node_id(word(&words, 1)?)?;
            let message = parse_message(&words[2..])?;
            Ok(subject.run(|node, ctx| node.on_message(from, message, ctx)))
        }
        "fire" => {
            let timer = match word(&words, 1)? {
                "tick" => PbTimer::Tick,
                "ping" => PbTimer::Ping,
                "retransmit" => PbTimer::Retransmit,
                other => return Err(format!("unknown timer {other:?}")),
            };
            Ok(subject.run(|node, ctx| node.on_timer(timer, ctx)))
        }
        "request" => {
            let client = word(&words, 1)?
                .strip_prefix('c')
                .and_then(|number| number.parse().ok())
                .map(ClientId)
                .ok_or("a client is named like c1")?;
            let request = parse_request(&words[2..])?;
            Ok(subject.run(|node, ctx| node.on_request(client, request, ctx)))
        }
        "state" => Ok(render_state(&subject.node)),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Runs a scenario file; returns the file as it should read (expectations replaced by the
/// actual output) and the first mismatch, if any.
fn run_file(text: &str) -> (String, Option<String>) {
    let mut rewritten = String::new();
    let mut mismatch = None;
    let mut subject = None;
    let mut lines = text.lines().enumerate().peekable();
    while let Some((number, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        let actual = execute(&mut subject, line).unwrap_or_else(|error| format!("error: {error}"));
        let mut expected = Vec::new();
        if lines.peek().is_some_and(|(_, next)| *next == "----") {
            lines.next();
            while let Some((_, next)) = lines.peek() {
                if next.trim().is_empty() {
                    break;
                }
                expected.push(*next);
                lines.next();
            }
        }
        if mismatch.is_none() && expected.join("\n") != actual {
            mismatch = Some(format!(
                "line {}: {line}\nexpected:\n{}\nactual:\n{actual}",
                number + 1,
                expected.join("\n")
            ));
        }
        rewritten.push_str(line);
        rewritten.push_str("\n----\n");
        rewritten.push_str(&actual);
        rewritten.push('\n');
    }
    (rewritten, mismatch)
}

#[test]
fn every_scenario_file_prints_what_it_expects() {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pb");
    let mut paths: Vec<_> = std::fs::read_dir(&directory)
        .expect("protocols/testdata/pb exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "scenario files: {paths:?}");
    let rewrite = std::env::var_os("REWRITE").is_some();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("a readable scenario");
        let (rewritten, mismatch) = run_file(&text);
        if rewrite {
            std::fs::write(&path, rewritten).expect("a writable scenario");
        } else if let Some(mismatch) = mismatch {
            panic!("{}: {mismatch}", path.display());
        }
    }
}

#[test]
fn a_wrong_expectation_is_reported_with_its_line() {
    let (_, mismatch) = run_file("start n0\n----\nok\n\nfire tick\n----\nsend n1 nothing\n");
    let mismatch = mismatch.expect("a mismatch");
    assert!(
        mismatch.starts_with("line 1:") || mismatch.starts_with("line 5:"),
        "{mismatch}"
    );
    let (_, unknown) = run_file("start n0\n----\nbogus\n");
    assert!(unknown.is_some());
}
