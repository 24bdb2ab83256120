// A browser call participant for matrix-callbot's interop tests: the real livekit-client
// (tests/browser/package.json pins the version Element Call pins), with end-to-end
// encryption set up the way Element Call sets it up, and WebAudio for a tone in and a
// spectrum out. tests/browser.py drives it over the DevTools protocol through
// `window.callbot`; every method returns JSON-able values.
//
// What mirrors Element Call (element-hq/element-call, read at b51a33c):
// - src/e2ee/matrixKeyProvider.ts: a BaseKeyProvider with { ratchetWindowSize: 10,
//   keyringSize: 256 }; each Matrix media key is imported raw as HKDF material and handed
//   over with onSetEncryptionKey(material, rtcBackendIdentity, index). Because the index is
//   given, livekit-client makes it the participant's current index: for our own identity
//   that switches the sender to the new key (the rotation the bot must follow).
// - src/state/CallViewModel/remoteMembers/ConnectionFactory.ts: `e2ee: { keyProvider,
//   worker }` with a dedicated E2EE worker per room; src/livekit/options.ts: the room and
//   publish defaults below; localMember/Publisher.ts: room.setE2EEEnabled(true).
import {
    AudioPresets,
    BaseKeyProvider,
    DefaultReconnectPolicy,
    Room,
    RoomEvent,
    Track,
    VideoPresets,
} from "/livekit/livekit-client.esm.mjs";

class MatrixKeyProvider extends BaseKeyProvider {
    constructor() {
        super({ ratchetWindowSize: 10, keyringSize: 256 });
    }

    // EC's onEncryptionKeyChanged: the raw Matrix key becomes HKDF key material.
    async setMatrixKey(identity, index, rawKey) {
        const material = await crypto.subtle.importKey("raw", rawKey, "HKDF", false, [
            "deriveBits",
            "deriveKey",
        ]);
        this.onSetEncryptionKey(material, identity, index);
    }
}

const FFT_SIZE = 8192; // 5.9 Hz bins at 48 kHz, about 170 ms of audio per look

const keyProvider = new MatrixKeyProvider();
const audio = new AudioContext({ sampleRate: 48_000 });
const listeners = new Map(); // identity -> AnalyserNode of their microphone
const tones = new Map(); // name -> { osc, track }
const events = []; // what happened, for the test and for its log
let room = null;

function note(kind, data = {}) {
    const entry = { kind, at: performance.now(), ...data };
    events.push(entry);
    console.info(`callbot ${kind} ${JSON.stringify(data)}`);
}

function roomOptions() {
    return {
        adaptiveStream: true,
        dynacast: true,
        publishDefaults: {
            audioPreset: AudioPresets.music,
            dtx: true,
            red: false, // the SFU cannot translate RED for encrypted audio
            forceStereo: false,
            simulcast: true,
            videoSimulcastLayers: [VideoPresets.h180, VideoPresets.h360],
            stopMicTrackOnMute: false,
            videoCodec: "vp8",
            backupCodec: { codec: "vp8", encoding: VideoPresets.h720.encoding },
        },
        stopLocalTrackOnUnpublish: true,
        reconnectPolicy: new DefaultReconnectPolicy(),
        disconnectOnPageLeave: true,
        webAudioMix: false,
        e2ee: {
            keyProvider,
            worker: new Worker("/livekit/livekit-client.e2ee.worker.mjs", { type: "module" }),
        },
    };
}

function listen(track, participant) {
    // Chrome delivers a remote WebRTC track to WebAudio only while a media element plays it.
    const element = track.attach();
    element.muted = true;
    document.body.append(element);
    const source = audio.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
    const analyser = audio.createAnalyser();
    analyser.fftSize = FFT_SIZE;
    analyser.smoothingTimeConstant = 0;
    const sink = audio.createGain();
    sink.gain.value = 0; // pulled by the graph, heard by nobody
    source.connect(analyser).connect(sink).connect(audio.destination);
    listeners.set(participant.identity, analyser);
}

window.callbot = {
    async connect(url, token) {
        await audio.resume();
        room = new Room(roomOptions());
        room.on(RoomEvent.TrackSubscribed, (track, _pub, participant) => {
            note("track_subscribed", { identity: participant.identity, kind: track.kind });
            if (track.kind === Track.Kind.Audio) listen(track, participant);
        })
            .on(RoomEvent.TrackUnsubscribed, (track, _pub, participant) => {
                note("track_unsubscribed", { identity: participant.identity, kind: track.kind });
                if (track.kind === Track.Kind.Audio) listeners.delete(participant.identity);
            })
            .on(RoomEvent.EncryptionError, (error, participant) => {
                note("encryption_error", {
                    identity: participant?.identity ?? null,
                    message: String(error?.message ?? error),
                });
            })
            .on(RoomEvent.ParticipantConnected, (p) => note("participant_connected", { identity: p.identity }))
            .on(RoomEvent.ParticipantDisconnected, (p) => note("participant_disconnected", { identity: p.identity }))
            .on(RoomEvent.Disconnected, (reason) => note("disconnected", { reason }));
        await room.connect(url, token);
        await room.setE2EEEnabled(true);
        note("connected", { identity: room.localParticipant.identity });
        return { identity: room.localParticipant.identity };
    },

    // A key from the Matrix side (a matrix-js-sdk EncryptionKeyChanged), base64.
    async setKey(identity, index, keyBase64) {
        const raw = Uint8Array.from(atob(keyBase64), (c) => c.charCodeAt(0));
        await keyProvider.setMatrixKey(identity, index, raw);
        note("key", { identity, index });
        return {};
    },

    // A sine tone as the microphone: OscillatorNode -> MediaStreamDestination -> publish.
    async publishTone(name, freq) {
        const osc = audio.createOscillator();
        osc.frequency.value = freq;
        const gain = audio.createGain();
        gain.gain.value = 0.3;
        const out = audio.createMediaStreamDestination();
        osc.connect(gain).connect(out);
        osc.start();
        const [track] = out.stream.getAudioTracks();
        const pub = await room.localParticipant.publishTrack(track, {
            name,
            source: Track.Source.Microphone,
        });
        tones.set(name, { osc, track });
        note("published", { name, freq, sid: pub.trackSid, encrypted: pub.isEncrypted });
        return { sid: pub.trackSid, encrypted: pub.isEncrypted };
    },

    async unpublishTone(name) {
        const tone = tones.get(name);
        if (!tone) throw new Error(`no tone ${name}`);
        await room.localParticipant.unpublishTrack(tone.track);
        tone.osc.stop();
        tones.delete(name);
        return {};
    },

    // What we hear of `identity` right now: the loudest frequency (Hz), its level (dBFS)
    // and the rms of the waveform; null while their audio is not subscribed.
    hear(identity) {
        const analyser = listeners.get(identity);
        if (!analyser) return null;
        const spectrum = new Float32Array(analyser.frequencyBinCount);
        analyser.getFloatFrequencyData(spectrum);
        let best = 1; // skip DC
        for (let i = 2; i < spectrum.length; i++) if (spectrum[i] > spectrum[best]) best = i;
        const wave = new Float32Array(analyser.fftSize);
        analyser.getFloatTimeDomainData(wave);
        let sum = 0;
        for (const v of wave) sum += v * v;
        return {
            freq: (best * audio.sampleRate) / analyser.fftSize,
            db: spectrum[best],
            rms: Math.sqrt(sum / wave.length),
        };
    },

    state() {
        return {
            connected: room?.state ?? "none",
            audio: audio.state,
            e2ee: room?.isE2EEEnabled ?? false,
            // identity -> whether all their tracks are published encrypted
            remote: Object.fromEntries(
                [...(room?.remoteParticipants.values() ?? [])].map((p) => [p.identity, p.isEncrypted]),
            ),
            listening: [...listeners.keys()],
            events,
        };
    },

    async disconnect() {
        if (room) await room.disconnect();
        return {};
    },
};
note("loaded");
