// Reference MatrixRTC peer for interop tests: the real matrix-js-sdk MatrixRTCSession, as
// Element Call drives it in its default "compatibility" mode (legacy
// org.matrix.msc3401.call.member state events, multi_sfu, to-device media keys).
//
// Usage: HS_URL=... USER_ID=... PASSWORD=... [DEVICE_NAME=...] [JSPEER_TRUST=signed]
//        [JSPEER_LOG_LEVEL=warn] node peer.mjs
//
// JSPEER_TRUST picks how the peer treats device trust (MSC4153):
//   strict   - own cross-signing bootstrapped at start, OnlySignedDevicesIsolationMode: Element
//              Web's "exclude insecure devices" (room keys only go to, and messages are only
//              decrypted from, devices cross-signed by their owner)
//   signed   - own cross-signing bootstrapped, AllDevicesIsolationMode (the js-sdk default)
//   insecure - no cross-signing at all: a device nobody can tell from an impostor
//
// Protocol: stdout carries only JSON lines. First {"event":"ready", user_id, device_id, trust,
// master_key, bootstrap_ms}; then replies {"reply":<id>,"ok":true,...} /
// {"reply":<id>,"ok":false,"error":"..."} to the JSON-line commands read from stdin, and events
// {"event":...}: memberships, key, message, notification_sent, to_device, log, error. Commands:
// create_room, join_room, invite, rtc_join, rtc_leave, memberships, state_events, send_state,
// send_text, send_to_device, device_status, user_identity, stop (see `commands` below), and
// those of JSPEER_EXTENSION.
// All js-sdk logging goes to stderr. EOF on stdin stops the peer like {"cmd":"stop"}.

import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { format } from "node:util";

// --- stdout is the JSON channel: route every console method to stderr first ----------------

const LEVELS = { trace: 0, debug: 1, info: 2, warn: 3, error: 4, silent: 5 };
const logLevel = LEVELS[(process.env.JSPEER_LOG_LEVEL ?? "warn").toLowerCase()] ?? LEVELS.warn;
const toStderr =
    (level) =>
    (...args) => {
        if (LEVELS[level] >= logLevel) process.stderr.write(`[${level}] ${format(...args)}\n`);
    };
// js-sdk's loglevel method factory looks `console[method]` up on every call, and its child
// loggers are all pinned at DEBUG, so filtering here is what sets the effective level.
globalThis.console = {
    ...globalThis.console,
    trace: toStderr("trace"),
    debug: toStderr("debug"),
    log: toStderr("info"),
    info: toStderr("info"),
    warn: toStderr("warn"),
    error: toStderr("error"),
};

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

function log(level, msg) {
    emit({ event: "log", level, msg });
}

process.on("uncaughtException", (err) => {
    process.stderr.write(`uncaught exception: ${err?.stack ?? err}\n`);
    emit({ event: "error", msg: `uncaught exception: ${err?.message ?? err}` });
});
process.on("unhandledRejection", (err) => {
    process.stderr.write(`unhandled rejection: ${err?.stack ?? err}\n`);
    emit({ event: "error", msg: `unhandled rejection: ${err?.message ?? err}` });
});

// Imported after the console swap so nothing the SDK does at load time reaches stdout.
const sdk = await import("matrix-js-sdk");
const rtc = await import("matrix-js-sdk/lib/matrixrtc/index.js");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
// The same module instance js-sdk's rust crypto uses (initialised by initRustCrypto).
const RustSdkCryptoJs = await import("@matrix-org/matrix-sdk-crypto-wasm");
const {
    ClientEvent,
    EventTimeline,
    EventType,
    KnownMembership,
    MatrixEventEvent,
    Preset,
    RoomEvent,
    SyncState,
    createClient,
} = sdk;
const { MatrixRTCSessionEvent, MatrixRTCSessionManagerEvents } = rtc;
const { AllDevicesIsolationMode, CrossSigningKey, OnlySignedDevicesIsolationMode } = cryptoApi;

// Element Call's defaults (EC src/config/ConfigOptions.ts, LocalMember.ts enterRTCSession)
const EC_JOIN_CONFIG = {
    manageMediaKeys: true,
    delayedLeaveEventDelayMs: 10_000,
    delayedLeaveEventRestartMs: 5_000,
    networkErrorRetryMs: 1_000,
    // ceil(min(sync_disconnect_grace_period_ms 10000, delay 10000) / 1000) + 1
    maximumNetworkErrorRetryCount: 11,
    unstableSendStickyEvents: false,
};

const WAIT_MS = 30_000;

function env(name) {
    const value = process.env[name];
    if (!value) throw new Error(`environment variable ${name} is required`);
    return value;
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(pred, what, timeoutMs = WAIT_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = pred();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(25);
    }
}

// --- login, crypto, first sync ---------------------------------------------------------------

const baseUrl = env("HS_URL");
const userId = env("USER_ID");
const password = env("PASSWORD");
const deviceName = process.env.DEVICE_NAME ?? "jspeer";
const TRUST_MODES = ["strict", "signed", "insecure"];
const trust = process.env.JSPEER_TRUST ?? "signed";
if (!TRUST_MODES.includes(trust)) {
    throw new Error(`JSPEER_TRUST must be one of ${TRUST_MODES.join(", ")}, not ${JSON.stringify(trust)}`);
}

const loginClient = createClient({ baseUrl });
const loginResp = await loginClient.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: userId },
    password,
    initial_device_display_name: deviceName,
});

const client = createClient({
    baseUrl,
    accessToken: loginResp.access_token,
    userId: loginResp.user_id,
    deviceId: loginResp.device_id,
});
// In-memory Rust crypto (no IndexedDB in Node): a fresh device per run.
await client.initRustCrypto({ useIndexedDB: false });
// A RustCrypto: queryKeys below also reaches into its internals.
const rustCrypto = client.getCrypto();

// --- cross-signing and device isolation (JSPEER_TRUST) ---------------------------------------

// Element answers the user-interactive auth for the signing-key upload with the account
// password. Synapse lets an account publish its first cross-signing keys without UIA (MSC3967),
// so the first, auth-less attempt normally goes through; a 401 with a UIA session gets the
// password.
async function authWithPassword(makeRequest) {
    try {
        return await makeRequest(null);
    } catch (err) {
        const session = err?.data?.session;
        if (err?.httpStatus !== 401 || !session) throw err;
        return await makeRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: loginResp.user_id },
            password,
            session,
        });
    }
}

// Before the first sync, so nobody downloads this device's keys unsigned, and so the device-key
// upload that bootstrapping makes cannot race the one the sync loop's request processing would.
async function setUpTrust() {
    if (trust === "insecure") return null;
    const started = performance.now();
    await rustCrypto.bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: authWithPassword,
    });
    const elapsed = Math.round(performance.now() - started);
    rustCrypto.setDeviceIsolationMode(
        trust === "strict" ? new OnlySignedDevicesIsolationMode() : new AllDevicesIsolationMode(false),
    );
    return elapsed;
}

const bootstrapMs = await setUpTrust();

const prepared = new Promise((resolve, reject) => {
    const onSync = (state, _prev, data) => {
        if (state === SyncState.Prepared) {
            client.off(ClientEvent.Sync, onSync);
            resolve();
        } else if (state === SyncState.Error && !client.isInitialSyncComplete()) {
            client.off(ClientEvent.Sync, onSync);
            reject(data?.error ?? new Error("initial sync failed"));
        }
    };
    client.on(ClientEvent.Sync, onSync);
});
await client.startClient({ initialSyncLimit: 20 });
await prepared;
// startClient starts client.matrixRTC (the MatrixRTCSessionManager) once the initial sync is
// complete, from a ClientEvent.Sync listener registered before ours; make sure anyway.
await waitFor(() => client.isInitialSyncComplete(), "initial sync");

// The own master key, read back rather than remembered: null unless the private keys and the
// published public ones match. After the first sync: before it, nothing sends the /keys/query
// for our own user that getIdentity waits on (it gives up after a second).
async function ownMasterKey() {
    if (trust === "insecure") return null;
    const key = await rustCrypto.getCrossSigningKeyId(CrossSigningKey.Master);
    if (!key) throw new Error("cross-signing bootstrap left no usable master key");
    return key;
}

const masterKey = await ownMasterKey();
const myUserId = client.getUserId();
const myDeviceId = client.getDeviceId();

// Every message that arrives live, decrypted: {event: "message", room_id, sender, body, msgtype,
// event_id, relates_to, encrypted, decryption_failure} (threads are not enabled, so thread
// messages arrive here too). One js cannot decrypt comes with body and msgtype null and
// decryption_failure set to js's DecryptionFailureCode, e.g. UNSIGNED_SENDER_DEVICE when strict
// mode refuses an unsigned sender; when a retry (a room key arriving late) changes the outcome,
// the message comes again.
const reportedFailure = new Map(); // event id -> decryption_failure last reported

function reportMessage(ev, roomId) {
    if (ev.getType() !== "m.room.message") return;
    const failure = ev.decryptionFailureReason ?? null;
    if (reportedFailure.has(ev.getId()) && reportedFailure.get(ev.getId()) === failure) return;
    reportedFailure.set(ev.getId(), failure);
    const content = failure ? {} : ev.getContent();
    emit({
        event: "message",
        room_id: roomId,
        sender: ev.getSender(),
        event_id: ev.getId(),
        body: content.body ?? null,
        msgtype: content.msgtype ?? null,
        relates_to: content["m.relates_to"] ?? null,
        encrypted: ev.isEncrypted(),
        decryption_failure: failure,
    });
}

client.on(RoomEvent.Timeline, async (ev, room, toStartOfTimeline) => {
    if (toStartOfTimeline || !room) return;
    await client.decryptEventIfNeeded(ev);
    reportMessage(ev, room.roomId);
});
// Retries only: the first attempt's Decrypted comes before the timeline handler reports.
client.on(MatrixEventEvent.Decrypted, (ev) => {
    if (reportedFailure.has(ev.getId())) reportMessage(ev, ev.getRoomId());
});

// To-device messages of the MatrixRTC key types js itself does not read (MSC4143's spec form),
// as js-sdk's rust crypto decrypted them: the content and who the Olm session says sent it.
const REPORTED_TO_DEVICE = new Set(["m.rtc.encryption_key", "org.matrix.msc4143.rtc.encryption_key"]);
client.on(ClientEvent.ReceivedToDeviceMessage, ({ message, encryptionInfo }) => {
    if (!REPORTED_TO_DEVICE.has(message.type)) return;
    emit({
        event: "to_device",
        type: message.type,
        sender: message.sender,
        content: message.content,
        encrypted: encryptionInfo !== null,
        sender_device: encryptionInfo?.senderDevice ?? null,
    });
});

// --- other users' keys -----------------------------------------------------------------------

// A fresh /keys/query for one user, fed into the OlmMachine. The public getUserDeviceInfo(
// [user], true) does not do this: it answers tracked users from the store, and downloads
// untracked ones without storing them, so getDeviceVerificationStatus would not see them. js-sdk
// refreshes the same way internally (RustCrypto.maybeAcceptKeyBundle, shareRoomHistoryWithUser).
async function queryKeys(userId) {
    const request = rustCrypto.olmMachine.queryKeysForUsers([new RustSdkCryptoJs.UserId(userId)]);
    await rustCrypto.outgoingRequestProcessor.makeOutgoingRequest(request);
}

function firstKey(keyInfo) {
    // `keys` is {"ed25519:<key>": "<key>"}: one key, wanted bare
    return keyInfo ? (Object.values(keyInfo.keys)[0] ?? null) : null;
}

// --- session observation ---------------------------------------------------------------------

function describe(session) {
    const oldest = session.getOldestMembership();
    return session.memberships.map((m) => ({
        user_id: m.userId,
        device_id: m.deviceId,
        member_id: m.memberId,
        created_ts: m.createdTs(),
        rtc_backend_identity: m.rtcBackendIdentity,
        transport: (oldest && m.getTransport(oldest)) ?? null,
        call_intent: m.callIntent ?? null,
        event_id: m.eventId,
    }));
}

function emitMemberships(roomId, session) {
    emit({ event: "memberships", room_id: roomId, members: describe(session) });
}

const observed = new WeakSet();

function observe(roomId, session) {
    if (observed.has(session)) return;
    observed.add(session);
    session.on(MatrixRTCSessionEvent.MembershipsChanged, () => emitMemberships(roomId, session));
    session.on(MatrixRTCSessionEvent.EncryptionKeyChanged, (key, index, membership, identity) => {
        emit({
            event: "key",
            room_id: roomId,
            user_id: membership.userId,
            device_id: membership.deviceId,
            member_id: membership.memberId,
            index,
            key: Buffer.from(key).toString("base64"),
            identity,
            own: membership.userId === myUserId && membership.deviceId === myDeviceId,
        });
    });
    session.on(MatrixRTCSessionEvent.MembershipManagerError, (error) => {
        emit({ event: "error", msg: `membership manager error in ${roomId}: ${error?.message ?? error}` });
    });
    session.on(MatrixRTCSessionEvent.DidSendCallNotification, (content) => {
        emit({ event: "notification_sent", room_id: roomId, content });
    });
    // The session may have computed members before we attached (SessionStarted comes after).
    emitMemberships(roomId, session);
}

client.matrixRTC.on(MatrixRTCSessionManagerEvents.SessionStarted, (roomId, session) => {
    observe(roomId, session);
});
client.matrixRTC.on(MatrixRTCSessionManagerEvents.SessionEnded, (roomId, session) => {
    emitMemberships(roomId, session);
});

function getRoom(roomId) {
    const room = client.getRoom(roomId);
    if (!room) throw new Error(`room ${roomId} is not known to the client`);
    return room;
}

function sessionFor(roomId) {
    const session = client.matrixRTC.getRoomSession(getRoom(roomId));
    observe(roomId, session);
    return session;
}

function isJoined(roomId) {
    return client.getRoom(roomId)?.getMyMembership() === KnownMembership.Join;
}

// --- commands --------------------------------------------------------------------------------

const commands = {
    async create_room({ invite = [], encrypted = true, name }) {
        const initial_state = [];
        if (encrypted) {
            initial_state.push({
                type: EventType.RoomEncryption,
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            });
        }
        const { room_id } = await client.createRoom({
            preset: Preset.PrivateChat,
            invite,
            name,
            initial_state,
            // Synapse replaces whole top-level keys, so restate its default event levels too.
            power_level_content_override: {
                events: {
                    "m.room.name": 50,
                    "m.room.power_levels": 100,
                    "m.room.history_visibility": 100,
                    "m.room.canonical_alias": 50,
                    "m.room.avatar": 50,
                    "m.room.tombstone": 100,
                    "m.room.server_acl": 100,
                    "m.room.encryption": 100,
                    [EventType.GroupCallMemberPrefix]: 0, // org.matrix.msc3401.call.member
                    "m.call.member": 0,
                },
            },
        });
        await waitFor(() => isJoined(room_id), `room ${room_id} in sync`);
        return { room_id };
    },

    async join_room({ room_id }) {
        await client.joinRoom(room_id);
        await waitFor(() => isJoined(room_id), `room ${room_id} in sync`);
        return { room_id };
    },

    async invite({ room_id, user_id }) {
        await client.invite(room_id, user_id);
        return {};
    },

    async rtc_join({ room_id, foci, notification_type, call_intent = "audio", member_id, config }) {
        if (!Array.isArray(foci) || foci.length === 0) throw new Error("foci must be a non-empty list");
        const session = sessionFor(room_id);
        await session.initialMembershipCalculated;
        // EC compatibility mode: the own transport, with livekit_alias for old clients, goes in as
        // the multi-SFU focus (-> focus_active multi_sfu, foci_preferred [transport]); EC passes
        // no further preferred foci. memberId is a fresh UUID per join, as in EC.
        const [own, ...rest] = foci;
        const transport = own.type === "livekit" ? { livekit_alias: room_id, ...own } : own;
        const memberId = member_id ?? randomUUID();
        session.joinRTCSession({ userId: myUserId, deviceId: myDeviceId, memberId }, rest, transport, {
            ...EC_JOIN_CONFIG,
            notificationType: notification_type,
            callIntent: call_intent ?? undefined,
            ...config,
        });
        await waitFor(
            () => session.memberships.some((m) => m.userId === myUserId && m.deviceId === myDeviceId),
            "own membership to come back through sync",
        );
        emitMemberships(room_id, session);
        return {
            member_id: memberId,
            status: session.membershipStatus ?? null,
            delay_id: session.delayId ?? null,
            members: describe(session),
        };
    },

    async rtc_leave({ room_id, timeout_ms = 10_000 }) {
        const session = sessionFor(room_id);
        const left = await session.leaveRoomSession(timeout_ms);
        return { left };
    },

    async memberships({ room_id }) {
        const session = sessionFor(room_id);
        return { members: describe(session), joined: session.isJoined() };
    },

    // Raw state events of one type (default: the legacy call member events), as this client sees them.
    async state_events({ room_id, type = EventType.GroupCallMemberPrefix }) {
        const state = getRoom(room_id).getLiveTimeline().getState(EventTimeline.FORWARDS);
        const events = (state?.getStateEvents(type) ?? []).map((ev) => ({
            state_key: ev.getStateKey(),
            sender: ev.getSender(),
            event_id: ev.getId(),
            origin_server_ts: ev.getTs(),
            content: ev.getContent(),
        }));
        return { events };
    },

    // A state event as given (e.g. a membership for another device, to test key checks).
    async send_state({ room_id, type, state_key, content }) {
        const { event_id } = await client.sendStateEvent(room_id, type, content, state_key);
        return { event_id };
    },

    // A to-device message: Olm-encrypted by js-sdk's rust crypto (as ToDeviceKeyTransport
    // sends keys, encryptAndSendToDevice) or, with encrypted=false, in clear.
    async send_to_device({ type, user_id, device_id, content, encrypted = true }) {
        if (encrypted) {
            await queryKeys(user_id);
            await client.encryptAndSendToDevice(type, [{ userId: user_id, deviceId: device_id }], content);
        } else {
            await client.sendToDevice(type, new Map([[user_id, new Map([[device_id, content]])]]));
        }
        return {};
    },

    async send_text({ room_id, body }) {
        const { event_id } = await client.sendTextMessage(room_id, body);
        return { event_id };
    },

    // How js judges one device (own or anyone's), after downloading its owner's keys afresh.
    async device_status({ user_id, device_id }) {
        await queryKeys(user_id);
        const devices = (await rustCrypto.getUserDeviceInfo([user_id], true)).get(user_id);
        const status = await rustCrypto.getDeviceVerificationStatus(user_id, device_id);
        if (!status) {
            return {
                known: false,
                listed: devices?.has(device_id) ?? false,
                signed_by_owner: null,
                cross_signing_verified: null,
                locally_verified: null,
                is_verified: null,
            };
        }
        return {
            known: true,
            listed: devices?.has(device_id) ?? false,
            signed_by_owner: status.signedByOwner,
            cross_signing_verified: status.crossSigningVerified,
            locally_verified: status.localVerified,
            is_verified: status.isVerified(),
        };
    },

    // The cross-signing identity js holds for a user, after downloading their keys afresh.
    async user_identity({ user_id }) {
        await queryKeys(user_id);
        const keys = await rustCrypto.getUserCrossSigningKeys(user_id);
        const status = await rustCrypto.getUserVerificationStatus(user_id);
        return {
            master_key: firstKey(keys?.master_key),
            self_signing_key: firstKey(keys?.self_signing_key),
            known: status.known,
            is_verified: status.isVerified(),
            needs_user_approval: status.needsUserApproval,
        };
    },

    async stop({ leave = true }) {
        await shutdown(leave);
        return {};
    },
};

let stopping = false;

async function shutdown(leave) {
    if (stopping) return;
    stopping = true;
    if (leave) {
        const leaves = client
            .getRooms()
            .map((room) => client.matrixRTC.getActiveRoomSession(room))
            .filter((session) => session?.isJoined())
            .map((session) => session.leaveRoomSession(5_000).catch(() => false));
        await Promise.all(leaves);
    }
    client.stopClient();
}

async function handle(line) {
    let msg;
    try {
        msg = JSON.parse(line);
    } catch (err) {
        emit({ event: "error", msg: `bad command line ${JSON.stringify(line)}: ${err.message}` });
        return;
    }
    const { id, cmd, ...args } = msg;
    try {
        const fn = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
        if (!fn) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
        const result = await fn(args);
        emit({ reply: id, ok: true, ...result });
        if (cmd === "stop") process.exit(0);
    } catch (err) {
        process.stderr.write(`command ${cmd} failed: ${err?.stack ?? err}\n`);
        emit({ reply: id, ok: false, error: String(err?.message ?? err) });
    }
}

// JSPEER_EXTENSION: the path of a module whose default export, given this client, returns more
// commands (tests/elementcall/widget-host.mjs: Element Call's widget host). It gets what it
// needs passed in, so it shares this process's one matrix-js-sdk instance.
if (process.env.JSPEER_EXTENSION) {
    const { default: extend } = await import(pathToFileURL(process.env.JSPEER_EXTENSION).href);
    Object.assign(commands, await extend({ client, sdk, emit, getRoom, waitFor }));
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
    if (line.trim()) void handle(line);
});
rl.on("close", () => {
    void shutdown(true).finally(() => process.exit(0));
});

emit({
    event: "ready",
    user_id: myUserId,
    device_id: myDeviceId,
    trust,
    master_key: masterKey,
    bootstrap_ms: bootstrapMs,
});
