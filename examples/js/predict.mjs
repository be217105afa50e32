// Monte-Carlo prediction with a qbnn graph from Node.js: onnxruntime-node only, no Python.
// Install (the variable skips a download of CUDA files that the CPU build does not use):
//   ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node@1.30.0
import ort from 'onnxruntime-node';

/** Open a qbnn ONNX file on the CPU. */
export function openModel(path) {
  return ort.InferenceSession.create(path, { executionProviders: ['cpu'] });
}

/**
 * Run S = numSamples MC samples on a batch.
 * x: Float32Array, C order, of shape [B, ...features]; numSamples: the int64 scalar input
 * `num_samples` (the export-time default is the file's metadata `qbnn.default_samples`).
 * Returns ort.Tensor outputs: probs [S, B, C], mean_probs [B, C], predictive_entropy,
 * expected_entropy and mutual_information [B].
 */
export function predict(session, x, shape, numSamples) {
  return session.run({
    input: new ort.Tensor('float32', x, shape),
    num_samples: new ort.Tensor('int64', BigInt64Array.of(BigInt(numSamples)), []),
  });
}

// const session = await openModel('model.onnx');
// const out = await predict(session, x, [2, 6], 16);
// out.mean_probs.data;          // Float32Array, B * C
// out.mutual_information.data;  // Float32Array, B: epistemic uncertainty per row
