/* A minimal SavedModel serving client for tensorflow_multihash, written
 * against the TensorFlow C API only (tensorflow/c/c_api.h).
 *
 *   multihash_serving_client [--op_library PATH]... [--tag TAG]
 *       [--signature NAME] [--input KEY] [--output KEY] SAVED_MODEL_DIR ID...
 *
 * 1. TF_LoadLibrary(PATH) for each --op_library: registers MultiHashLookup
 *    and its kernels (tensorflow_multihash/_multihash_ops.so). Without it
 *    the SavedModel fails to load with "Op type not registered
 *    'MultiHashLookup'" (unless the ops are linked in, see BUILD).
 * 2. TF_LoadSessionFromSavedModel(SAVED_MODEL_DIR, tag "serve"), which also
 *    returns the serialized MetaGraphDef.
 * 3. The signature (default "serving_default") is read from that
 *    MetaGraphDef with a small protobuf wire-format reader, so the tensor
 *    names (e.g. "serving_default_ids:0", "StatefulPartitionedCall:0") need
 *    not be known: the signature must have one input (or --input KEY) of
 *    dtype int64 or int32.
 * 4. Runs it on the ids from the command line and prints, for each output
 *    (or --output KEY), a header line "# output KEY [d0,d1]" and then one
 *    line per row, values as %.9g (exact for float32).
 *
 * Exit status: 0 on success, 1 on a TensorFlow error, 2 on a usage error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

#define MAX_TENSORS 64

/* ------------------------------------------------------------ protobuf */
/* Just enough of the wire format to walk MetaGraphDef.signature_def. */

typedef struct {
  const uint8_t* p;
  const uint8_t* end;
} Reader;

static int read_varint(Reader* r, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
    uint8_t b = *r->p++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return 1;
    }
  }
  return 0;
}

/* Reads one field: its number, wire type, and for length-delimited fields
 * the sub-range, for varints the value. Returns 0 at the end or on error. */
static int next_field(Reader* r, uint32_t* field, uint32_t* wire, Reader* sub,
                      uint64_t* value) {
  uint64_t key, len;
  if (r->p >= r->end || !read_varint(r, &key)) return 0;
  *field = (uint32_t)(key >> 3);
  *wire = (uint32_t)(key & 7);
  switch (*wire) {
    case 0:
      return read_varint(r, value);
    case 1:
      if (r->end - r->p < 8) return 0;
      r->p += 8;
      return 1;
    case 2:
      if (!read_varint(r, &len) || (uint64_t)(r->end - r->p) < len) return 0;
      sub->p = r->p;
      sub->end = r->p + len;
      r->p += len;
      return 1;
    case 5:
      if (r->end - r->p < 4) return 0;
      r->p += 4;
      return 1;
    default:
      return 0;
  }
}

static int str_eq(Reader s, const char* want) {
  size_t n = (size_t)(s.end - s.p);
  return strlen(want) == n && memcmp(s.p, want, n) == 0;
}

static char* str_dup(Reader s) {
  size_t n = (size_t)(s.end - s.p);
  char* out = malloc(n + 1);
  memcpy(out, s.p, n);
  out[n] = '\0';
  return out;
}

/* A map<string, M> entry: key = field 1, value = field 2. */
static void map_entry(Reader entry, Reader* key, Reader* value) {
  uint32_t f, w;
  uint64_t v;
  Reader sub;
  key->p = key->end = entry.p;
  value->p = value->end = entry.p;
  while (next_field(&entry, &f, &w, &sub, &v)) {
    if (f == 1 && w == 2) *key = sub;
    if (f == 2 && w == 2) *value = sub;
  }
}

typedef struct {
  char* key;
  char* name; /* tensor name "op:index" */
  int dtype;  /* TF_DataType */
} TensorInfo;

/* TensorInfo: name = 1, dtype = 2. */
static void parse_tensor_info(Reader r, TensorInfo* info) {
  uint32_t f, w;
  uint64_t v;
  Reader sub;
  info->name = NULL;
  info->dtype = 0;
  while (next_field(&r, &f, &w, &sub, &v)) {
    if (f == 1 && w == 2) info->name = str_dup(sub);
    if (f == 2 && w == 0) info->dtype = (int)v;
  }
}

/* Finds signature `signature` in a MetaGraphDef (signature_def = 5; a
 * SignatureDef has inputs = 1, outputs = 2). Returns 0 if it is missing. */
static int find_signature(const TF_Buffer* meta_graph, const char* signature,
                          TensorInfo* inputs, int* n_inputs,
                          TensorInfo* outputs, int* n_outputs) {
  Reader r = {(const uint8_t*)meta_graph->data,
              (const uint8_t*)meta_graph->data + meta_graph->length};
  uint32_t f, w;
  uint64_t v;
  Reader sub, key, value;
  while (next_field(&r, &f, &w, &sub, &v)) {
    if (f != 5 || w != 2) continue;
    map_entry(sub, &key, &value);
    if (!str_eq(key, signature)) continue;
    *n_inputs = *n_outputs = 0;
    while (next_field(&value, &f, &w, &sub, &v)) {
      if ((f != 1 && f != 2) || w != 2) continue;
      TensorInfo* list = f == 1 ? inputs : outputs;
      int* n = f == 1 ? n_inputs : n_outputs;
      if (*n >= MAX_TENSORS) continue;
      Reader k, t;
      map_entry(sub, &k, &t);
      list[*n].key = str_dup(k);
      parse_tensor_info(t, &list[*n]);
      ++*n;
    }
    return 1;
  }
  return 0;
}

static void list_signatures(const TF_Buffer* meta_graph) {
  Reader r = {(const uint8_t*)meta_graph->data,
              (const uint8_t*)meta_graph->data + meta_graph->length};
  uint32_t f, w;
  uint64_t v;
  Reader sub, key, value;
  while (next_field(&r, &f, &w, &sub, &v)) {
    if (f != 5 || w != 2) continue;
    map_entry(sub, &key, &value);
    fprintf(stderr, "  %.*s\n", (int)(key.end - key.p), (const char*)key.p);
  }
}

/* ------------------------------------------------------------ helpers */

static int check(TF_Status* status, const char* what) {
  if (TF_GetCode(status) == TF_OK) return 1;
  fprintf(stderr, "multihash_serving_client: %s: %s\n", what,
          TF_Message(status));
  return 0;
}

/* "op:3" -> operation "op", index 3 (no suffix: index 0). */
static TF_Output graph_output(TF_Graph* graph, const char* tensor_name) {
  TF_Output out = {NULL, 0};
  if (tensor_name == NULL) return out;
  size_t n = strlen(tensor_name);
  char* name = malloc(n + 1);
  memcpy(name, tensor_name, n + 1);
  char* colon = strrchr(name, ':');
  if (colon) {
    *colon = '\0';
    out.index = atoi(colon + 1);
  }
  out.oper = TF_GraphOperationByName(graph, name);
  free(name);
  return out;
}

static void no_free(void* data, size_t len, void* arg) {
  (void)data;
  (void)len;
  (void)arg;
}

static void print_tensor(const char* key, const TF_Tensor* t) {
  int rank = TF_NumDims(t);
  int64_t rows = rank > 0 ? TF_Dim(t, 0) : 1;
  int64_t count = (int64_t)TF_TensorElementCount(t);
  int64_t width = rows > 0 ? count / rows : 0;
  printf("# output %s [", key);
  for (int d = 0; d < rank; ++d) {
    printf(d ? ",%lld" : "%lld", (long long)TF_Dim(t, d));
  }
  printf("]\n");
  TF_DataType dtype = TF_TensorType(t);
  const void* data = TF_TensorData(t);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < width; ++j) {
      double x;
      if (dtype == TF_FLOAT) {
        x = ((const float*)data)[i * width + j];
      } else if (dtype == TF_DOUBLE) {
        x = ((const double*)data)[i * width + j];
      } else if (dtype == TF_INT64) {
        x = (double)((const int64_t*)data)[i * width + j];
      } else if (dtype == TF_INT32) {
        x = ((const int32_t*)data)[i * width + j];
      } else {
        printf("(dtype %d not printed)", (int)dtype);
        break;
      }
      printf(j ? " %.9g" : "%.9g", x);
    }
    printf("\n");
  }
}

static int usage(void) {
  fprintf(stderr,
          "usage: multihash_serving_client [--op_library PATH]... "
          "[--tag TAG] [--signature NAME] [--input KEY] [--output KEY] "
          "SAVED_MODEL_DIR ID...\n");
  return 2;
}

int main(int argc, char** argv) {
  const char* libraries[16];
  int n_libraries = 0;
  const char* tag = "serve";
  const char* signature = "serving_default";
  const char* input_key = NULL;
  const char* output_key = NULL;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
    if (i + 1 >= argc) return usage();
    if (strcmp(argv[i], "--op_library") == 0 && n_libraries < 16) {
      libraries[n_libraries++] = argv[i + 1];
    } else if (strcmp(argv[i], "--tag") == 0) {
      tag = argv[i + 1];
    } else if (strcmp(argv[i], "--signature") == 0) {
      signature = argv[i + 1];
    } else if (strcmp(argv[i], "--input") == 0) {
      input_key = argv[i + 1];
    } else if (strcmp(argv[i], "--output") == 0) {
      output_key = argv[i + 1];
    } else {
      return usage();
    }
  }
  if (argc - i < 2) return usage();
  const char* export_dir = argv[i++];
  int64_t n_ids = argc - i;
  int64_t* ids = malloc(sizeof(int64_t) * (size_t)n_ids);
  for (int64_t k = 0; k < n_ids; ++k) {
    char* end;
    ids[k] = strtoll(argv[i + k], &end, 10);
    if (*end != '\0') {
      fprintf(stderr, "multihash_serving_client: not an integer id: %s\n",
              argv[i + k]);
      return 2;
    }
  }

  TF_Status* status = TF_NewStatus();

  /* 1. The op library: registers the ops before the graph is imported. */
  for (int k = 0; k < n_libraries; ++k) {
    TF_Library* lib = TF_LoadLibrary(libraries[k], status);
    if (!check(status, libraries[k])) return 1;
    (void)lib; /* Kept loaded for the life of the process. */
  }

  /* 2. The SavedModel. */
  TF_Graph* graph = TF_NewGraph();
  TF_SessionOptions* options = TF_NewSessionOptions();
  TF_Buffer* meta_graph = TF_NewBuffer();
  const char* tags[] = {tag};
  TF_Session* session = TF_LoadSessionFromSavedModel(
      options, NULL, export_dir, tags, 1, graph, meta_graph, status);
  if (!check(status, "loading the SavedModel")) return 1;

  /* 3. The signature's tensors. */
  TensorInfo inputs[MAX_TENSORS], outputs[MAX_TENSORS];
  int n_inputs = 0, n_outputs = 0;
  if (!find_signature(meta_graph, signature, inputs, &n_inputs, outputs,
                      &n_outputs)) {
    fprintf(stderr,
            "multihash_serving_client: no signature '%s'; the SavedModel "
            "has:\n",
            signature);
    list_signatures(meta_graph);
    return 2;
  }
  const TensorInfo* in = NULL;
  for (int k = 0; k < n_inputs; ++k) {
    if (input_key ? strcmp(inputs[k].key, input_key) == 0 : n_inputs == 1) {
      in = &inputs[k];
    }
  }
  if (in == NULL || in->name == NULL) {
    fprintf(stderr,
            "multihash_serving_client: signature '%s' has %d inputs; name "
            "the id input with --input KEY\n",
            signature, n_inputs);
    return 2;
  }
  if (in->dtype != TF_INT64 && in->dtype != TF_INT32) {
    fprintf(stderr,
            "multihash_serving_client: input '%s' has dtype %d, not int64 "
            "or int32\n",
            in->key, in->dtype);
    return 2;
  }
  TF_Output feed = graph_output(graph, in->name);
  if (feed.oper == NULL) {
    fprintf(stderr, "multihash_serving_client: no tensor %s in the graph\n",
            in->name);
    return 1;
  }
  TF_Output fetches[MAX_TENSORS];
  const char* fetch_keys[MAX_TENSORS];
  int n_fetches = 0;
  for (int k = 0; k < n_outputs; ++k) {
    if (output_key && strcmp(outputs[k].key, output_key) != 0) continue;
    fetches[n_fetches] = graph_output(graph, outputs[k].name);
    if (fetches[n_fetches].oper == NULL) {
      fprintf(stderr, "multihash_serving_client: no tensor %s in the graph\n",
              outputs[k].name ? outputs[k].name : "(unnamed)");
      return 1;
    }
    fetch_keys[n_fetches++] = outputs[k].key;
  }
  if (n_fetches == 0) {
    fprintf(stderr, "multihash_serving_client: no output %s in '%s'\n",
            output_key ? output_key : "at all", signature);
    return 2;
  }

  /* 4. Run it. */
  int64_t dims[1] = {n_ids};
  TF_Tensor* feed_tensor;
  int32_t* ids32 = NULL;
  if (in->dtype == TF_INT64) {
    feed_tensor = TF_NewTensor(TF_INT64, dims, 1, ids,
                               sizeof(int64_t) * (size_t)n_ids, no_free, NULL);
  } else {
    ids32 = malloc(sizeof(int32_t) * (size_t)n_ids);
    for (int64_t k = 0; k < n_ids; ++k) ids32[k] = (int32_t)ids[k];
    feed_tensor = TF_NewTensor(TF_INT32, dims, 1, ids32,
                               sizeof(int32_t) * (size_t)n_ids, no_free, NULL);
  }
  TF_Tensor* results[MAX_TENSORS] = {NULL};
  TF_SessionRun(session, NULL, &feed, &feed_tensor, 1, fetches, results,
                n_fetches, NULL, 0, NULL, status);
  if (!check(status, "running the signature")) return 1;
  for (int k = 0; k < n_fetches; ++k) {
    print_tensor(fetch_keys[k], results[k]);
    TF_DeleteTensor(results[k]);
  }

  TF_DeleteTensor(feed_tensor);
  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteBuffer(meta_graph);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  free(ids);
  free(ids32);
  return 0;
}
