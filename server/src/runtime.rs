//! One tokio task drives one sans-IO node: the same code the simulator and the model
//! checker run, now on real time, real sockets and real storage.
//!
//! The task is the only thing that changes the node. Inputs (peer messages, client
//! requests, fired timers, storage reports) arrive on one channel and are handled one at a
//! time, exactly like the simulator's events; the task handles whatever is queued before
//! it publishes the node's state once. The node sits behind a lock the task holds for
//! writing only while it handles such a batch, so other tasks can look at the node between
//! batches without an input ([`NodeHandle::try_read`]): read-only queries that need no
//! effect (e.g. serializable reads) are answered off the node's task, in parallel, and wait
//! neither for it nor behind its other inputs. Effects are carried out as follows:
//! - `Persist`/`Checkpoint` go to the storage thread in order, `Sync` asks it for a group
//!   commit ([`crate::log`]);
//! - `Send` and `Reply` pass through an [`OutputGate`]: each waits until the records it
//!   depends on are durable (the output-commit rule), then leaves through the peer
//!   transport or to the waiting caller. The gate sits in an [`Outlet`] shared with the
//!   storage thread, which releases what waited for a sync as soon as the sync returns:
//!   a follower's acknowledgement leaves without first waking the node's task;
//! - timers are tokio sleeps tagged with a generation, so a cancelled timer, or one whose
//!   sleep was replaced by an earlier one, is ignored when it reports; a timer re-armed for
//!   later keeps its sleep, which sleeps the rest on waking.

use crate::log::{RecordLog, Storage, StorageJob};
use crate::transport::{PeerSender, start_listener};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};
use synod_core::node::{ClientId, Context, Effect, Node, NodeId, OutputGate};
use synod_core::rng::Rng;
use synod_core::time::Time;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Inputs waiting for the node task; peer messages beyond this are dropped.
pub const INBOX_CAPACITY: usize = 16 * 1024;

/// Why a request did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The node stopped (shut down, or its storage failed).
    #[error("the node has stopped")]
    Stopped,
    /// No answer within the caller's deadline; the request may or may not have executed.
    #[error("no answer within {0:?}; the request may or may not have taken effect")]
    Timeout(Duration),
    /// A newer request from the same client replaced this one before it was answered.
    #[error("superseded by a newer request from the same client")]
    Superseded,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A durable record could not be decoded: the data directory belongs to another
    /// version or protocol, or is damaged.
    #[error(
        "durable record {index} cannot be decoded ({error}); is this data directory from another protocol or version?"
    )]
    Record {
        /// Position of the record among those recovered.
        index: usize,
        /// The decoder's message.
        error: String,
    },
}

/// Where a node starts from.
pub enum Boot {
    /// A brand new node with empty storage.
    Fresh,
    /// A restart: the serialized durable records, oldest first.
    Recover(Vec<Vec<u8>>),
}

/// Where a node is and who its peers are.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// Every member's peer address, this node's included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
}

/// A caller's handler run on the node's task.
type ActHandler<N> = Box<dyn for<'a> FnOnce(&mut N, &mut Context<'a, N>) + Send>;

enum Input<N: Node> {
    Message {
        from: NodeId,
        message: N::Message,
    },
    Request {
        client: ClientId,
        request: N::Request,
        answer: oneshot::Sender<N::Response>,
    },
    Timer {
        timer: N::Timer,
        generation: u64,
    },
    StorageFailed(String),
    Inspect(Box<dyn FnOnce(&N) + Send>),
    /// Runs a handler of the caller's (e.g. a membership change) with a context.
    Act(ActHandler<N>),
    /// Starts dialing a peer learned at run time.
    AddPeer(NodeId, SocketAddr),
    /// Stops sending to a peer (and closes the connection to it).
    RemovePeer(NodeId),
    Stop,
}

enum Output<N: Node> {
    Send(NodeId, N::Message),
    Reply(ClientId, N::Response),
}

/// Where the node's sends and replies leave: the output gate, the peer transport and the
/// callers waiting for answers. The node's task submits outputs; the storage thread
/// reports each completed sync and sends what it released itself.
struct Outlet<N: Node> {
    id: NodeId,
    gate: OutputGate<Output<N>>,
    peers: PeerSender<N::Message>,
    waiters: BTreeMap<ClientId, oneshot::Sender<N::Response>>,
    /// The node's own inbox, for messages it sends itself.
    inbox: mpsc::Sender<Input<N>>,
}

impl<N: RuntimeNode> Outlet<N> {
    /// Sends `output` now, or holds it until `records_required` records are durable.
    fn submit(&mut self, records_required: u64, output: Output<N>) {
        if let Some(output) = self.gate.submit(records_required, output) {
            self.emit(output);
        }
    }

    /// The first `count` records of this life are durable: sends what waited for them.
    fn durable(&mut self, count: u64) {
        for output in self.gate.durable(count) {
            self.emit(output);
        }
        self.peers.flush();
    }

    fn emit(&mut self, output: Output<N>) {
        match output {
            Output::Send(to, message) if to == self.id => {
                let _ = self.inbox.try_send(Input::Message {
                    from: self.id,
                    message,
                });
            }
            Output::Send(to, message) => self.peers.send(to, message),
            Output::Reply(client, response) => {
                if let Some(waiter) = self.waiters.remove(&client) {
                    let _ = waiter.send(response);
                }
            }
        }
    }
}

/// The node task has not finished booting the node: nothing may read it yet.
const BOOTING: u8 = 0;
/// The node task runs: the node may be read between batches.
const RUNNING: u8 = 1;
/// The node task ended (stopped, storage failed, node halted): nothing may read the node.
const ENDED: u8 = 2;

/// The node, shared between its task (the only writer) and readers.
struct Shared<N> {
    node: RwLock<N>,
    /// [`BOOTING`], [`RUNNING`] or [`ENDED`]; the task marks the end before it lets go of
    /// the lock, so a reader that holds the lock and sees [`RUNNING`] reads a live node.
    phase: AtomicU8,
}

impl<N> Shared<N> {
    fn end(&self) {
        self.phase.store(ENDED, Ordering::Release);
    }
}

/// Marks the node ended when the task ends, however it ends (returned, aborted, panicked).
struct EndOnDrop<N>(Arc<Shared<N>>);

impl<N> Drop for EndOnDrop<N> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A running node: send it requests, inspect it, stop it.
pub struct NodeHandle<N: Node> {
    inbox: mpsc::Sender<Input<N>>,
    shared: Arc<Shared<N>>,
    task: Option<JoinHandle<()>>,
    listener: JoinHandle<()>,
    peer_address: SocketAddr,
}

/// The bounds the runtime needs on a node's types (they cross threads and the network; the
/// node itself is read from other threads between its task's batches).
pub trait RuntimeNode:
    Node<
        Message: Serialize + DeserializeOwned + Send,
        Request: Send,
        Response: Send,
        Timer: Send,
        Record: Send + 'static,
    > + Send
    + Sync
    + 'static
{
}
impl<N> RuntimeNode for N where
    N: Node<
            Message: Serialize + DeserializeOwned + Send,
            Request: Send,
            Response: Send,
            Timer: Send,
            Record: Send + 'static,
        > + Send
        + Sync
        + 'static
{
}

impl<N: RuntimeNode> NodeHandle<N> {
    /// Starts `node` with `config`, recording into `log`, listening for peers on `listener`
    /// (bound by the caller, so tests can use OS-chosen ports).
    pub fn start(
        node: N,
        config: NodeConfig,
        listener: TcpListener,
        log: impl RecordLog,
        boot: Boot,
    ) -> Result<Self, StartError> {
        Self::start_observed(node, config, listener, log, boot, |_| {})
    }

    /// Like [`NodeHandle::start`], calling `observe` with the node after every input it
    /// handles (on the node's task: keep it cheap, e.g. publish a few numbers).
    pub fn start_observed(
        node: N,
        config: NodeConfig,
        listener: TcpListener,
        log: impl RecordLog,
        boot: Boot,
        observe: impl FnMut(&N) + Send + 'static,
    ) -> Result<Self, StartError> {
        let records = match boot {
            Boot::Fresh => None,
            Boot::Recover(payloads) => Some(
                payloads
                    .iter()
                    .enumerate()
                    .map(|(index, payload)| {
                        postcard::from_bytes::<N::Record>(payload).map_err(|error| {
                            StartError::Record {
                                index,
                                error: error.to_string(),
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let peer_address = listener.local_addr().unwrap_or(config.peers[&config.id]);
        let (inbox, inputs) = mpsc::channel::<Input<N>>(INBOX_CAPACITY);
        let deliver_inbox = inbox.clone();
        let listener = start_listener::<N::Message, _>(listener, move |from, message| {
            // A full inbox drops the message, like a lossy network.
            let _ = deliver_inbox.try_send(Input::Message { from, message });
        });
        let outlet = Arc::new(Mutex::new(Outlet {
            id: config.id,
            gate: OutputGate::new(0),
            peers: PeerSender::start(config.id, &config.peers),
            waiters: BTreeMap::new(),
            inbox: inbox.clone(),
        }));
        let durable_outlet = outlet.clone();
        let error_inbox = inbox.clone();
        let storage = Storage::spawn(
            log,
            move |count| crate::lock(&durable_outlet).durable(count),
            move |error| {
                let _ = error_inbox.blocking_send(Input::StorageFailed(error.to_string()));
            },
        );
        let members: Vec<NodeId> = config.peers.keys().copied().collect();
        let seed = random_u64() ^ u64::from(config.id.0);
        let own_inbox = inbox.clone();
        let shared = Arc::new(Shared {
            node: RwLock::new(node),
            phase: AtomicU8::new(BOOTING),
        });
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let _end = EndOnDrop(shared.clone());
            let mut driver = Driver::<N> {
                id: config.id,
                members,
                epoch: Instant::now(),
                rng: Rng::new(seed),
                appended: 0,
                outlet,
                timers: BTreeMap::new(),
                sync_wanted: false,
                sync_requested: 0,
                storage_jobs: Vec::new(),
                next_generation: 0,
                storage,
                inbox: own_inbox,
                observe: Box::new(observe),
                halted: false,
            };
            {
                let Ok(mut node) = shared.node.write() else {
                    return;
                };
                driver.boot(&mut node, records);
                if driver.halted {
                    shared.end();
                    return;
                }
                (driver.observe)(&node);
                shared.phase.store(RUNNING, Ordering::Release);
            }
            driver.run(&shared, inputs).await;
        });
        Ok(NodeHandle {
            inbox,
            shared,
            task: Some(task),
            listener,
            peer_address,
        })
    }

    /// The address peers reach this node on.
    pub fn peer_address(&self) -> SocketAddr {
        self.peer_address
    }

    /// Sends `request` as `client` and waits up to `timeout` for the node's answer. One
    /// request per client at a time: a newer one from the same client supersedes it.
    pub async fn call(
        &self,
        client: ClientId,
        request: N::Request,
        timeout: Duration,
    ) -> Result<N::Response, RuntimeError> {
        let (answer, answered) = oneshot::channel();
        self.inbox
            .send(Input::Request {
                client,
                request,
                answer,
            })
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(RuntimeError::Superseded),
            Err(_) => Err(RuntimeError::Timeout(timeout)),
        }
    }

    /// Runs `look` on the node's current state (on the node's task) and returns its result.
    pub async fn inspect<T: Send + 'static>(
        &self,
        look: impl FnOnce(&N) -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let (sender, receiver) = oneshot::channel();
        self.inbox
            .send(Input::Inspect(Box::new(move |node| {
                let _ = sender.send(look(node));
            })))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        receiver.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Runs `look` on the node's state on the caller's thread, between two batches of the
    /// node task's inputs (it sees what the node had applied after the last batch).
    /// `Ok(Err(look))` hands `look` back unrun if the node task holds the node right now
    /// (handling inputs, or still booting): the caller may ask the task instead
    /// ([`NodeHandle::inspect`]) rather than block its thread waiting. Fails if the node
    /// ended or halted (also when `look` made it halt, e.g. by a failed read of its value
    /// file: the task is then told to stop, and what `look` saw is dropped).
    ///
    /// `look` holds up the node task while it runs: keep it short.
    pub fn try_read<T, F: FnOnce(&N) -> T>(&self, look: F) -> Result<Result<T, F>, RuntimeError> {
        if self.shared.phase.load(Ordering::Acquire) == ENDED {
            return Err(RuntimeError::Stopped);
        }
        let node = match self.shared.node.try_read() {
            Ok(node) => node,
            Err(TryLockError::WouldBlock) => return Ok(Err(look)),
            Err(TryLockError::Poisoned(_)) => return Err(RuntimeError::Stopped),
        };
        // Checked again under the lock: the task marks the end before it lets go of it.
        match self.shared.phase.load(Ordering::Acquire) {
            RUNNING => {}
            BOOTING => return Ok(Err(look)),
            _ => return Err(RuntimeError::Stopped),
        }
        if node.halted().is_some() {
            return Err(RuntimeError::Stopped);
        }
        let seen = look(&node);
        if node.halted().is_some() {
            drop(node);
            // The task stops when it handles any input and finds the node halted.
            let _ = self.inbox.try_send(Input::Inspect(Box::new(|_| {})));
            return Err(RuntimeError::Stopped);
        }
        Ok(Ok(seen))
    }

    /// Runs `look` on the node's state: on the caller's thread if the node task is between
    /// batches ([`NodeHandle::try_read`]), otherwise on the node's task
    /// ([`NodeHandle::inspect`]).
    pub async fn read<T: Send + 'static>(
        &self,
        look: impl FnOnce(&N) -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        match self.try_read(look)? {
            Ok(seen) => Ok(seen),
            Err(look) => self.inspect(look).await,
        }
    }

    /// Runs `act` on the node (on the node's task) with a context whose effects are carried
    /// out like any handler's, and returns its result: how the embedding layer calls node
    /// methods beyond the [`Node`] inputs (e.g. a membership change).
    pub async fn act<T: Send + 'static>(
        &self,
        act: impl for<'a> FnOnce(&mut N, &mut Context<'a, N>) -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let (sender, receiver) = oneshot::channel();
        self.inbox
            .send(Input::Act(Box::new(move |node, ctx| {
                let _ = sender.send(act(node, ctx));
            })))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        receiver.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Starts sending to `peer` at `address` (a member learned at run time); a peer
    /// already known keeps its address.
    pub async fn add_peer(&self, peer: NodeId, address: SocketAddr) -> Result<(), RuntimeError> {
        self.inbox
            .send(Input::AddPeer(peer, address))
            .await
            .map_err(|_| RuntimeError::Stopped)
    }

    /// Stops sending to `peer` and closes the connection to it (a member removed from the
    /// cluster); [`NodeHandle::add_peer`] dials it again.
    pub async fn remove_peer(&self, peer: NodeId) -> Result<(), RuntimeError> {
        self.inbox
            .send(Input::RemovePeer(peer))
            .await
            .map_err(|_| RuntimeError::Stopped)
    }

    /// Stops the node as a crash would: records not yet synced may be lost, held outputs
    /// are never sent. Waits until the node task has ended.
    pub async fn stop(mut self) {
        let _ = self.inbox.send(Input::Stop).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.listener.abort();
    }
}

impl<N: Node> Drop for NodeHandle<N> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.listener.abort();
    }
}

/// 64 bits that differ between processes and restarts. Only the simulator needs
/// reproducible randomness; here node RNGs and client ids must simply not collide.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Locks the node for writing, for one batch of inputs; `None` if a panic poisoned it.
/// Readers hold it briefly, but one may hold it for a while (a range over many keys): the
/// wait then happens off the runtime's worker, whose other tasks move to another thread.
fn lock_for_batch<N>(node: &RwLock<N>) -> Option<RwLockWriteGuard<'_, N>> {
    match node.try_write() {
        Ok(guard) => return Some(guard),
        Err(TryLockError::Poisoned(_)) => return None,
        Err(TryLockError::WouldBlock) => {}
    }
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if multi_thread {
        tokio::task::block_in_place(|| node.write()).ok()
    } else {
        node.write().ok()
    }
}

/// Inputs the node task handles per wake-up before it publishes its state.
const INPUTS_PER_WAKE: usize = 256;

/// What handling one input did.
enum Step {
    /// The node may have changed: publish.
    Changed,
    /// Nothing to publish.
    Unchanged,
    /// The node stops.
    Stop,
}

/// A pending timer: when it fires, and the sleep that will report it.
struct Armed {
    /// When the timer fires.
    deadline: Instant,
    /// The sleep whose report counts (earlier sleeps' reports are ignored).
    generation: u64,
    /// When that sleep wakes (at or before `deadline`).
    sleeping_until: Instant,
}

struct Driver<N: Node> {
    id: NodeId,
    members: Vec<NodeId>,
    epoch: Instant,
    rng: Rng,
    appended: u64,
    outlet: Arc<Mutex<Outlet<N>>>,
    timers: BTreeMap<N::Timer, Armed>,
    /// A handler asked for a sync that was not requested from the storage thread yet.
    sync_wanted: bool,
    /// Records appended (in this life) when the last sync was requested.
    sync_requested: u64,
    /// Storage jobs of this batch of inputs, sent to the storage thread together at its end.
    storage_jobs: Vec<StorageJob>,
    next_generation: u64,
    storage: Storage,
    inbox: mpsc::Sender<Input<N>>,
    observe: Box<dyn FnMut(&N) + Send>,
    /// The node halted (see [`Node::halted`]): the task ends.
    halted: bool,
}

impl<N: RuntimeNode> Driver<N> {
    fn now(&self) -> Time {
        Time(self.epoch.elapsed().as_nanos() as u64)
    }

    fn boot(&mut self, node: &mut N, records: Option<Vec<N::Record>>) {
        self.handle(node, |node, ctx| match records {
            None => node.on_start(ctx),
            Some(records) => node.on_recover(records, ctx),
        });
        self.flush_outputs();
    }

    /// Handles inputs until the node stops. The node is locked for writing while a batch
    /// of inputs is handled and its state published, never across an await.
    async fn run(mut self, shared: &Shared<N>, mut inputs: mpsc::Receiver<Input<N>>) {
        while let Some(input) = inputs.recv().await {
            let Some(mut node) = lock_for_batch(&shared.node) else {
                return; // Poisoned by a panic: readers see the end too.
            };
            // Handle what is queued already before publishing once: under load one
            // wake-up of this task serves many inputs.
            let mut changed = match self.input(&mut node, input) {
                Step::Stop => return shared.end(),
                Step::Changed => true,
                Step::Unchanged => false,
            };
            for _ in 1..INPUTS_PER_WAKE {
                let Ok(input) = inputs.try_recv() else {
                    break;
                };
                match self.input(&mut node, input) {
                    Step::Stop => return shared.end(),
                    Step::Changed => changed = true,
                    Step::Unchanged => {}
                }
            }
            if changed {
                (self.observe)(&node);
            }
            // Outputs leave after the lock is released: a small batch of storage jobs may
            // run on this task (see `Storage`), and readers need not wait for the disk.
            drop(node);
            self.flush_outputs();
            if self.halted {
                return shared.end();
            }
        }
    }

    /// Sends this batch's messages to the peers, then its storage jobs to the storage
    /// thread: followers start on their copies first (the leader's own sync is seldom
    /// the last one a commit waits for).
    fn flush_outputs(&mut self) {
        crate::lock(&self.outlet).peers.flush();
        self.flush_storage();
    }

    /// Sends this batch's storage jobs to the storage thread, ending with a sync if a
    /// handler asked for one since the last request.
    fn flush_storage(&mut self) {
        // A sync covers every record appended before it: a request with no record appended
        // since the last one would only wake the storage thread to report the same count.
        if std::mem::take(&mut self.sync_wanted) && self.appended > self.sync_requested {
            self.storage_jobs.push(StorageJob::Sync);
            self.sync_requested = self.appended;
        }
        if !self.storage_jobs.is_empty()
            && let Err(error) = self.storage.submit(std::mem::take(&mut self.storage_jobs))
        {
            tracing::error!(node = self.id.0, %error, "storage failed: stopping the node");
            self.halted = true;
        }
    }

    /// Handles one input.
    fn input(&mut self, node: &mut N, input: Input<N>) -> Step {
        match input {
            Input::Message { from, message } => {
                self.handle(node, |node, ctx| node.on_message(from, message, ctx));
            }
            Input::Request {
                client,
                request,
                answer,
            } => {
                crate::lock(&self.outlet).waiters.insert(client, answer);
                self.handle(node, |node, ctx| node.on_request(client, request, ctx));
            }
            Input::Timer { timer, generation } => {
                let Some(armed) = self.timers.get_mut(&timer) else {
                    return Step::Unchanged; // Cancelled.
                };
                if armed.generation != generation {
                    return Step::Unchanged; // A sleep replaced by an earlier one.
                }
                let now = Instant::now();
                if now < armed.deadline {
                    // Re-armed for later while this sleep ran: sleep the rest.
                    let deadline = armed.deadline;
                    self.spawn_sleep(timer, deadline);
                    return Step::Unchanged;
                }
                self.timers.remove(&timer);
                self.handle(node, |node, ctx| node.on_timer(timer, ctx));
            }
            Input::StorageFailed(error) => {
                tracing::error!(node = self.id.0, %error, "storage failed: stopping the node");
                return Step::Stop;
            }
            Input::Inspect(look) => {
                look(node);
                if let Some(reason) = node.halted() {
                    tracing::error!(node = self.id.0, %reason, "the node halted: stopping it");
                    return Step::Stop;
                }
                return Step::Unchanged;
            }
            Input::Act(act) => self.handle(node, act),
            Input::AddPeer(peer, address) => {
                crate::lock(&self.outlet).peers.add(self.id, peer, address);
                return Step::Unchanged;
            }
            Input::RemovePeer(peer) => {
                crate::lock(&self.outlet).peers.remove(peer);
                return Step::Unchanged;
            }
            Input::Stop => return Step::Stop,
        }
        if self.halted {
            return Step::Stop; // The handler's effects were dropped; the task ends.
        }
        Step::Changed
    }

    /// Starts a sleep that reports `timer` at `deadline`; it replaces the timer's running
    /// sleep (whose report is then ignored).
    fn spawn_sleep(&mut self, timer: N::Timer, deadline: Instant) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Some(armed) = self.timers.get_mut(&timer) {
            armed.generation = generation;
            armed.sleeping_until = deadline;
        }
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let _ = inbox.send(Input::Timer { timer, generation }).await;
        });
    }

    fn handle(&mut self, node: &mut N, handler: impl FnOnce(&mut N, &mut Context<N>)) {
        let now = self.now();
        let members = std::mem::take(&mut self.members);
        let mut ctx = Context::with_records(self.id, &members, now, &mut self.rng, self.appended);
        handler(node, &mut ctx);
        let effects = ctx.into_effects();
        self.members = members;
        if let Some(reason) = node.halted() {
            // Nothing this step produced may leave: it may rest on a failed read.
            tracing::error!(node = self.id.0, %reason, "the node halted: stopping it");
            self.halted = true;
            return;
        }
        for effect in effects {
            self.apply(effect);
        }
    }

    /// Carries out one effect; sends and replies go through the outlet.
    fn apply(&mut self, effect: Effect<N>) {
        match effect {
            Effect::Send {
                to,
                message,
                records_required,
            } => crate::lock(&self.outlet).submit(records_required, Output::Send(to, message)),
            Effect::Reply {
                client,
                response,
                records_required,
            } => {
                crate::lock(&self.outlet).submit(records_required, Output::Reply(client, response))
            }
            Effect::SetTimer {
                timer,
                after_min,
                after_max,
            } => {
                let low = after_min.as_nanos() as u64;
                let high = (after_max.as_nanos() as u64).max(low);
                let delay = Duration::from_nanos(self.rng.between(low, high));
                let deadline = Instant::now() + delay;
                // A timer re-armed for later keeps its running sleep, which sleeps the rest
                // when it wakes (followers re-arm two timers on every append they get);
                // only an earlier deadline, or no running sleep, starts a new one.
                match self.timers.get_mut(&timer) {
                    Some(armed) if armed.sleeping_until <= deadline => {
                        armed.deadline = deadline;
                    }
                    _ => {
                        self.timers.insert(
                            timer.clone(),
                            Armed {
                                deadline,
                                generation: 0,
                                sleeping_until: deadline,
                            },
                        );
                        self.spawn_sleep(timer, deadline);
                    }
                }
            }
            Effect::CancelTimer { timer } => {
                self.timers.remove(&timer);
            }
            Effect::Persist { record } => self.append(&record, false),
            Effect::Checkpoint { record, derived } => self.append_checkpoint(record, derived),
            // One sync request per batch of inputs: the storage thread syncs once for all.
            Effect::Sync => self.sync_wanted = true,
        }
    }

    fn append(&mut self, record: &N::Record, checkpoint: bool) {
        self.appended += 1;
        match postcard::to_stdvec(record) {
            Ok(payload) => {
                self.storage_jobs.push(StorageJob::Append {
                    payload,
                    checkpoint,
                });
            }
            Err(error) => {
                // Never acknowledge what was not written: stop the storage thread, which
                // leaves every output that depends on this record held forever.
                tracing::error!(%error, "cannot encode a record; the node will stop");
                self.storage.close();
                self.storage_jobs.clear();
            }
        }
    }

    /// Hands a checkpoint to the storage thread, which serializes it straight into its
    /// file: a checkpoint's state can be hundreds of megabytes, and serializing it there
    /// keeps that copy out of memory and the work off the node's task.
    /// A `derived` one (a compaction) goes to the log's background writer, so appends and
    /// syncs go on while it is written.
    fn append_checkpoint(&mut self, record: N::Record, derived: bool) {
        self.appended += 1;
        let write = move |out: &mut dyn std::io::Write| {
            postcard::to_io(&record, out)
                .map(|_| ())
                .map_err(std::io::Error::other)
        };
        let job = if derived {
            StorageJob::Compaction(Box::new(write))
        } else {
            StorageJob::Checkpoint(Box::new(write))
        };
        self.storage_jobs.push(job);
    }
}
