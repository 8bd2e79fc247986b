"""The inference room: window notices in, estimates out (`dmd infer`; `worker.InferenceWorker`)."""
