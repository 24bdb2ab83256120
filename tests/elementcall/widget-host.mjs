// The Matrix side of a widget host for Element Call: what Element Web's StopGapWidgetDriver does
// with its MatrixClient, done with this jspeer's client (matrix-js-sdk, Rust crypto). Loaded into
// tests/jspeer/peer.mjs through JSPEER_EXTENSION, so there is one client and one js-sdk.
//
// Commands (widget_*) answer the WidgetDriver calls that tests/elementcall/host/host.js forwards
// from matrix-widget-api's ClientWidgetApi; they never fail as commands: a failed request comes
// back as {failure: {message, matrix_api_error}}, which the page turns into the widget API error
// Element Web's driver would give (processError: MatrixError.asWidgetApiErrorData()).
// widget_watch starts the events the host feeds to the widget: {event: "widget", kind, raw,
// encrypted} with kind "event" (an event from sync, decrypted), "state" (a state change) or
// "to_device" (a to-device message, Olm-decrypted when `encrypted`).

export default function extend({ client, sdk, emit, getRoom }) {
    const { ClientEvent, EventTimeline, EventType, MatrixError, MatrixEventEvent, RoomStateEvent } = sdk;

    function effective(ev) {
        return ev.getEffectiveEvent();
    }

    function liveState(roomId) {
        return getRoom(roomId).getLiveTimeline().getState(EventTimeline.FORWARDS);
    }

    const watched = new Set();
    const fed = new Set(); // event ids fed to the widget already

    // As Element Web's StopGapWidget: every event from sync (never a local echo), once it is
    // decrypted; an encrypted one waits for its Decrypted, one that fails is not fed.
    function feedEvent(ev) {
        if (!watched.has(ev.getRoomId()) || fed.has(ev.getId())) return;
        if (ev.shouldAttemptDecryption() || ev.isBeingDecrypted() || ev.isDecryptionFailure()) return;
        fed.add(ev.getId());
        emit({ event: "widget", kind: "event", raw: effective(ev) });
    }

    function watch(roomId) {
        if (watched.size === 0) {
            client.on(ClientEvent.Event, (ev) => {
                void client.decryptEventIfNeeded(ev);
                feedEvent(ev);
            });
            client.on(MatrixEventEvent.Decrypted, feedEvent);
            client.on(RoomStateEvent.Events, (ev) => {
                if (!watched.has(ev.getRoomId())) return;
                emit({ event: "widget", kind: "state", raw: effective(ev) });
            });
            // Element Web: feedToDevice(message, encryptionInfo !== null), the message as sent
            // in clear; the widget's capabilities decide what reaches it.
            client.on(ClientEvent.ReceivedToDeviceMessage, ({ message, encryptionInfo }) => {
                emit({ event: "widget", kind: "to_device", raw: message, encrypted: encryptionInfo !== null });
            });
        }
        watched.add(roomId);
    }

    async function sendToDevice({ type, encrypted, messages }) {
        const recipients = Object.entries(messages).flatMap(([userId, devices]) =>
            Object.entries(devices).map(([deviceId, payload]) => ({ userId, deviceId, payload })),
        );
        if (!encrypted) {
            await client.queueToDevice({ eventType: type, batch: recipients });
            return {};
        }
        // As Element Web: one Olm encryption per distinct payload, each batch queued.
        const byPayload = new Map();
        for (const { userId, deviceId, payload } of recipients) {
            const key = JSON.stringify(payload);
            if (!byPayload.has(key)) byPayload.set(key, []);
            byPayload.get(key).push({ userId, deviceId });
        }
        const crypto = client.getCrypto();
        await Promise.all(
            [...byPayload].map(async ([payload, devices]) => {
                const batch = await crypto.encryptToDeviceMessages(type, devices, JSON.parse(payload));
                await client.queueToDevice(batch);
            }),
        );
        return {};
    }

    const ops = {
        async watch({ room_id }) {
            watch(room_id);
            return {};
        },
        async send_event({ room_id, type, content, state_key }) {
            let response;
            if (state_key !== undefined && state_key !== null) {
                response = await client.sendStateEvent(room_id, type, content, state_key);
            } else if (type === EventType.RoomRedaction) {
                response = await client.redactEvent(room_id, content.redacts);
            } else {
                response = await client.sendEvent(room_id, type, content);
            }
            return { room_id, event_id: response.event_id };
        },
        async send_delayed({ room_id, delay, type, content, state_key }) {
            const response =
                state_key !== undefined && state_key !== null
                    ? await client._unstable_sendDelayedStateEvent(room_id, { delay }, type, content, state_key)
                    : await client._unstable_sendDelayedEvent(room_id, { delay }, null, type, content);
            return { room_id, delay_id: response.delay_id };
        },
        async send_sticky({ room_id, duration_ms, type, content }) {
            const response = await client._unstable_sendStickyEvent(room_id, duration_ms, null, type, content);
            return { room_id, event_id: response.event_id };
        },
        async send_delayed_sticky({ room_id, delay, duration_ms, type, content }) {
            const response = await client._unstable_sendStickyDelayedEvent(
                room_id,
                duration_ms,
                { delay },
                null,
                type,
                content,
            );
            return { room_id, delay_id: response.delay_id };
        },
        async update_delayed({ delay_id, action }) {
            await client._unstable_updateDelayedEvent(delay_id, action);
            return {};
        },
        send_to_device: sendToDevice,
        async read_timeline({ room_id, type, msgtype, state_key, limit, since }) {
            const events = getRoom(room_id).getLiveTimeline().getEvents();
            const max = limit > 0 ? limit : Number.MAX_SAFE_INTEGER;
            const found = [];
            for (let i = events.length - 1; i >= 0 && found.length < max; i--) {
                const ev = events[i];
                if (since !== undefined && since !== null && ev.getId() === since) break;
                if (ev.getType() !== type || ev.isState()) continue;
                if (type === EventType.RoomMessage && msgtype && msgtype !== ev.getContent().msgtype) continue;
                if (state_key !== undefined && state_key !== null && ev.getStateKey() !== state_key) continue;
                found.push(effective(ev));
            }
            return { events: found };
        },
        async read_state({ room_id, type, state_key }) {
            const state = liveState(room_id);
            if (!state) return { events: [] };
            if (state_key === undefined || state_key === null) {
                return { events: state.getStateEvents(type).map(effective) };
            }
            const ev = state.getStateEvents(type, state_key);
            return { events: ev ? [effective(ev)] : [] };
        },
        async read_sticky({ room_id }) {
            const sticky = [...(getRoom(room_id)._unstable_getStickyEvents?.() ?? [])];
            return { events: sticky.map(effective) };
        },
        async openid() {
            return { token: await client.getOpenIdToken() };
        },
    };

    return {
        async widget({ op, args = {} }) {
            const fn = Object.hasOwn(ops, op) ? ops[op] : undefined;
            if (!fn) return { failure: { message: `unknown widget op ${JSON.stringify(op)}` } };
            try {
                return { result: await fn(args) };
            } catch (err) {
                const failure = { message: String(err?.message ?? err) };
                if (err instanceof MatrixError) failure.matrix_api_error = err.asWidgetApiErrorData();
                process.stderr.write(`widget ${op} failed: ${err?.stack ?? err}\n`);
                return { failure };
            }
        },
    };
}
