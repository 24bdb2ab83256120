// A widget host for Element Call in tests: embeds Element Call's embedded build in an iframe, as
// Element Web does, and answers it with matrix-widget-api's ClientWidgetApi. The WidgetDriver
// below does no Matrix itself: each call goes over a DevTools binding (window.callbotBackend) to
// the test, which hands it to a matrix-js-sdk client with Rust crypto
// (tests/elementcall/widget-host.mjs) and settles it with window.host.settle; what that client
// receives comes back through window.host.push and is fed to the widget.
//
// Configuration: the page's location.hash, a JSON object {roomId, userId, deviceId, baseUrl,
// widgetId, transports, widgetParams, settings} (tests/elementcall.py writes it).

const { ClientWidgetApi, Widget, WidgetDriver, OpenIDRequestState } = window.mxwidgets;
const config = JSON.parse(decodeURIComponent(location.hash.slice(1)));

// --- the backend (the test, and the js-sdk client behind it) --------------------------------

const pending = new Map(); // id -> {resolve, reject}
let nextId = 1;

class BackendError extends Error {
    constructor(failure) {
        super(failure.message);
        // What Element Web's processError returns for a MatrixError, so js-sdk in the widget
        // rebuilds it (MatrixError.fromWidgetApiErrorData): delayed-event M_NOT_FOUND and the like.
        this.details = failure.matrix_api_error ? { matrix_api_error: failure.matrix_api_error } : undefined;
    }
}

function backend(op, args) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        window.callbotBackend(JSON.stringify({ id, op, args }));
    });
}

// --- what the host saw, for the test --------------------------------------------------------

const seen = {
    ready: false,
    capabilities: [], // requested by the widget
    actions: {}, // from-widget action -> count
    errors: [], // {op, message}
    feedErrors: 0,
};

// --- the WidgetDriver -----------------------------------------------------------------------

class TestDriver extends WidgetDriver {
    async validateCapabilities(requested) {
        // Element Web grants Element Call what it asks for (a trusted, virtual widget).
        seen.capabilities = [...requested];
        return new Set(requested);
    }

    async sendEvent(eventType, content, stateKey = null, roomId = null) {
        const r = await call("send_event", {
            room_id: roomId ?? config.roomId,
            type: eventType,
            content,
            state_key: stateKey,
        });
        return { roomId: r.room_id, eventId: r.event_id };
    }

    async sendDelayedEvent(delay, eventType, content, stateKey = null, roomId = null) {
        const r = await call("send_delayed", {
            room_id: roomId ?? config.roomId,
            delay,
            type: eventType,
            content,
            state_key: stateKey,
        });
        return { roomId: r.room_id, delayId: r.delay_id };
    }

    async sendStickyEvent(stickyDurationMs, eventType, content, roomId = null) {
        const r = await call("send_sticky", {
            room_id: roomId ?? config.roomId,
            duration_ms: stickyDurationMs,
            type: eventType,
            content,
        });
        return { roomId: r.room_id, eventId: r.event_id };
    }

    async sendDelayedStickyEvent(delay, stickyDurationMs, eventType, content, roomId = null) {
        const r = await call("send_delayed_sticky", {
            room_id: roomId ?? config.roomId,
            delay,
            duration_ms: stickyDurationMs,
            type: eventType,
            content,
        });
        return { roomId: r.room_id, delayId: r.delay_id };
    }

    async cancelScheduledDelayedEvent(delayId) {
        await call("update_delayed", { delay_id: delayId, action: "cancel" });
    }

    async restartScheduledDelayedEvent(delayId) {
        await call("update_delayed", { delay_id: delayId, action: "restart" });
    }

    async sendScheduledDelayedEvent(delayId) {
        await call("update_delayed", { delay_id: delayId, action: "send" });
    }

    async sendToDevice(eventType, encrypted, contentMap) {
        await call("send_to_device", { type: eventType, encrypted, messages: contentMap });
    }

    async readRoomTimeline(roomId, eventType, msgtype, stateKey, limit, since) {
        const r = await call("read_timeline", { room_id: roomId, type: eventType, msgtype, state_key: stateKey, limit, since });
        return r.events;
    }

    async readRoomState(roomId, eventType, stateKey) {
        const r = await call("read_state", { room_id: roomId, type: eventType, state_key: stateKey });
        return r.events;
    }

    async readStickyEvents(roomId) {
        const r = await call("read_sticky", { room_id: roomId });
        return r.events;
    }

    askOpenID(observer) {
        // Element Web allows Element Call's OpenID requests without asking (widgetPermissionStore).
        call("openid", {}).then(
            (r) => observer.update({ state: OpenIDRequestState.Allowed, token: r.token }),
            () => observer.update({ state: OpenIDRequestState.Blocked }),
        );
    }

    async getRtcTransports() {
        // The homeserver's transports, as Element Web would fetch them (MSC4143); the test's SFU.
        return { rtc_transports: config.transports };
    }

    async navigate() {}

    async *getTurnServers() {}

    getKnownRooms() {
        return [config.roomId];
    }

    processError(error) {
        return error instanceof BackendError ? error.details : undefined;
    }
}

async function call(op, args) {
    try {
        return await backend(op, args);
    } catch (err) {
        seen.errors.push({ op, message: String(err?.message ?? err) });
        throw err;
    }
}

// --- the widget -----------------------------------------------------------------------------

function widgetUrl() {
    // Element Web puts Element Call's parameters in the fragment (EC reads both).
    const params = new URLSearchParams({
        widgetId: config.widgetId,
        parentUrl: location.href.split("#")[0],
        roomId: config.roomId,
        userId: config.userId,
        deviceId: config.deviceId,
        baseUrl: config.baseUrl,
        ...config.widgetParams,
    });
    return new URL(`/element-call/index.html#?${params}`, location.href).href;
}

// Element Call's own settings (its localStorage, which this same-origin host shares).
for (const [key, value] of Object.entries(config.settings)) {
    localStorage.setItem(`matrix-setting-${key}`, JSON.stringify(value));
}

const iframe = document.createElement("iframe");
// As Element Web's AppTile allows its widgets; Element Call needs the microphone and autoplay.
iframe.allow = "microphone; camera; display-capture; autoplay; clipboard-write;";
iframe.src = widgetUrl();
document.body.appendChild(iframe);

const widget = new Widget({
    id: config.widgetId,
    creatorUserId: config.userId,
    type: "m.call",
    url: iframe.src,
    waitForIframeLoad: false, // Element Call says content_loaded itself
    data: {},
});
const api = new ClientWidgetApi(widget, iframe, new TestDriver());
api.setViewedRoomId(config.roomId);
api.on("ready", () => {
    seen.ready = true;
});

// Every from-widget action, counted; Element Call's own ones answered as Element Web does
// (Call.ts: an empty acknowledgement; set_always_on_screen: success).
api.transport.on("message", (ev) => {
    const action = ev.detail?.action;
    if (action) seen.actions[action] = (seen.actions[action] ?? 0) + 1;
});
const ELEMENT_ACTIONS = {
    "io.element.join": {},
    "io.element.device_mute": {},
    "io.element.tile_layout": {},
    "io.element.spotlight_layout": {},
    "im.vector.hangup": {},
    "io.element.close": {},
    set_always_on_screen: { success: true },
};
for (const [action, reply] of Object.entries(ELEMENT_ACTIONS)) {
    api.on(`action:${action}`, (ev) => {
        ev.preventDefault();
        api.transport.reply(ev.detail, reply);
    });
}

// --- what the page offers the test ----------------------------------------------------------

function feed(promise) {
    promise.catch((err) => {
        seen.feedErrors += 1;
        console.warn("feeding the widget failed:", err?.message ?? err);
    });
}

function frameWindow() {
    return iframe.contentWindow;
}

// Remote audio as Element Call's page decodes it: one analyser per remote audio track of the
// peer connections the widget made (tests/elementcall.py records them as they are created).
const audio = new AudioContext({ sampleRate: 48_000 });
const FFT_SIZE = 8192;
const analysers = new Map(); // track id -> AnalyserNode

function remoteAudioTracks() {
    const pcs = frameWindow().__callbotPcs ?? [];
    return pcs.flatMap((pc) =>
        pc
            .getReceivers()
            .map((r) => r.track)
            .filter((t) => t && t.kind === "audio" && t.readyState === "live"),
    );
}

function analyser(track) {
    let node = analysers.get(track.id);
    if (!node) {
        const source = audio.createMediaStreamSource(new MediaStream([track]));
        node = audio.createAnalyser();
        node.fftSize = FFT_SIZE;
        node.smoothingTimeConstant = 0;
        const sink = audio.createGain();
        sink.gain.value = 0; // pulled by the graph, heard by nobody
        source.connect(node).connect(sink).connect(audio.destination);
        analysers.set(track.id, node);
    }
    return node;
}

function listen(node) {
    const spectrum = new Float32Array(node.frequencyBinCount);
    node.getFloatFrequencyData(spectrum);
    let best = 1; // skip DC
    for (let i = 2; i < spectrum.length; i++) if (spectrum[i] > spectrum[best]) best = i;
    const wave = new Float32Array(node.fftSize);
    node.getFloatTimeDomainData(wave);
    const rms = Math.sqrt(wave.reduce((s, x) => s + x * x, 0) / wave.length);
    return { freq: (best * audio.sampleRate) / node.fftSize, db: spectrum[best], rms };
}

window.host = {
    settle(id, reply) {
        const p = pending.get(id);
        if (!p) return;
        pending.delete(id);
        if (reply.failure) p.reject(new BackendError(reply.failure));
        else p.resolve(reply.result);
    },
    push(msg) {
        if (msg.kind === "event") feed(api.feedEvent(msg.raw));
        else if (msg.kind === "state") feed(api.feedStateUpdate(msg.raw));
        else if (msg.kind === "to_device") feed(api.feedToDevice(msg.raw, msg.encrypted));
    },
    seen() {
        return seen;
    },
    // The widget's document: its visible text, and the names on its participant tiles.
    view() {
        const doc = frameWindow().document;
        const names = [...doc.querySelectorAll("[data-testid='videoTile'], [data-testid='name_tag']")].map(
            (el) => el.innerText,
        );
        return { text: doc.body?.innerText ?? "", tiles: names, title: doc.title };
    },
    // What the widget decodes of each remote audio track now; [] before any is subscribed.
    async hear() {
        if (audio.state !== "running") await audio.resume();
        return remoteAudioTracks().map((t) => ({ track: t.id, ...listen(analyser(t)) }));
    },
};
