// The live connection: EventSource on the gateway's /events, resuming by itself, no duplicates.
//
// EventSource reconnects on its own after a dropped connection and sends the last `id:` it saw
// as the Last-Event-ID header, which the gateway resumes from. Two cases it does not cover
// are handled here: the gateway's `lagged` event (this client fell behind; reopen at the
// cursor it gives) and a connection the browser gave up on (readyState CLOSED, e.g. an HTTP
// error from a proxy), reopened with ?since=<last cursor> after a back-off. Each stream's
// Redis entry id is also checked, so an event delivered twice is counted and dropped.

// Every type in bus/events.py (EVENT_TYPES there): EventSource only dispatches named events to
// their listeners, so a type missing here would be dropped silently.
// tests/dashboard/test_event_types.py keeps this list equal to bus/events.py.
export const EVENT_TYPES = [
  "train.step",
  "train.status",
  "train.sample",
  "train.layers",
  "job.queued",
  "job.started",
  "job.progress",
  "job.finished",
  "job.failed",
  "checkpoint.ready",
  "checkpoint.pruned",
  "checkpoint.pulled",
  "model.swapped",
  "model.swap_failed",
  "model.activated",
  "eval.result",
  "study.progress",
  "study.report",
  "telemetry",
  "alert",
  "deadletter",
];

function entryOrder(a, b) {
  // Redis entry ids are "<ms>-<seq>"; compare numerically, both parts.
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am === bm ? as - bs : am - bm;
}

export class LiveStream {
  constructor(url, { onEvent, onState }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.cursor = "0"; // the last `id:` seen; "0" replays what the streams retain
    this.lastEntry = new Map(); // stream → last Redis entry id applied
    // reopens: connections this code replaced (lagged, or given up by the browser); a plain
    // reconnect by EventSource itself only shows in `opens`.
    this.stats = { received: 0, applied: 0, duplicates: 0, opens: 0, reopens: 0, lagged: 0, errors: 0 };
    this.retryMs = 1000;
    this.source = null;
    this.timer = null;
  }

  start() {
    this.open(this.cursor);
  }

  open(since) {
    if (this.source) {
      this.source.close();
      this.stats.reopens += 1;
    }
    clearTimeout(this.timer);
    const source = new EventSource(`${this.url}?since=${encodeURIComponent(since)}`);
    this.source = source;
    source.onopen = () => {
      this.stats.opens += 1;
      this.retryMs = 1000;
      this.onState("live");
    };
    source.onerror = () => {
      this.stats.errors += 1;
      if (source.readyState === EventSource.CLOSED) {
        this.onState("reconnecting");
        this.timer = setTimeout(() => this.open(this.cursor), this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, 10000);
      } else {
        this.onState("reconnecting"); // the browser is already retrying with Last-Event-ID
      }
    };
    const handle = (message) => this.handle(message);
    for (const type of EVENT_TYPES) source.addEventListener(type, handle);
    source.addEventListener("message", handle);
    source.addEventListener("lagged", (message) => {
      this.stats.lagged += 1;
      let resume = this.cursor;
      try {
        resume = JSON.parse(message.data).resume ?? resume;
      } catch {
        // keep the last cursor: resuming from it loses nothing either
      }
      this.cursor = resume;
      this.onState("lagged");
      this.open(resume);
    });
  }

  handle(message) {
    this.stats.received += 1;
    if (message.lastEventId) this.cursor = message.lastEventId;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    const stream = event.stream ?? "";
    const entry = event.entry_id;
    if (entry) {
      const last = this.lastEntry.get(stream);
      if (last && entryOrder(entry, last) <= 0) {
        this.stats.duplicates += 1;
        return;
      }
      this.lastEntry.set(stream, entry);
    }
    this.stats.applied += 1;
    this.onEvent(event.type || message.type, event);
  }
}
