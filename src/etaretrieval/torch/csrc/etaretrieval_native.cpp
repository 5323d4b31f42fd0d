// Native CPU kernels of the top-K retrieval operators, for programs served without Python.
//
// Registers etaretrieval_native::topk_hamming and etaretrieval_native::topk_hamming_lookup with the
// arguments of etaretrieval::topk_hamming / topk_hamming_lookup: an AOTInductor package exported with
// etaretrieval.torch.decompositions(native=True) calls them, so a C++ program linked against this
// library (and libtorch) serves it at the speed of the Numba kernels. The results equal the Numba
// kernels' bit for bit: per row, a counting sort over the 64 W + 1 possible Hamming distances picks the
// positions ordered by (distance ascending, position descending), -1 past the valid positions.
//
// Shapes and dtypes are checked by the Python wrappers when the program is exported (etaretrieval.torch
// .native); the values only the data reveals are checked here, with the messages of the Numba drivers:
// lengths outside 0..L (ValueError) and a valid position holding an id outside the table (IndexError).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

// Set bits of a ^ b over W words (W > 0: known at compile time, so the loop unrolls; 0: `words`).
template <int W>
inline int32_t hamming(const int64_t* a, const int64_t* b, int64_t words) {
  const int64_t n = W > 0 ? W : words;
  int32_t d = 0;
  for (int64_t w = 0; w < n; ++w) {
    d += __builtin_popcountll(static_cast<uint64_t>(a[w] ^ b[w]));
  }
  return d;
}

// Calls f(std::integral_constant<int, W>) with W = words for 1..8 words, 0 (the generic loop) above.
template <typename F>
void with_words(int64_t words, F&& f) {
  switch (words) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

// The validity of positions: a (B, L) / (L,) bool mask or (B,) int64 lengths (at most one), padding side.
struct Validity {
  const bool* mask = nullptr;
  int64_t mask_row_stride = 0;  // 0: one (L,) mask for every row
  const int64_t* lengths = nullptr;
  bool left = false;
  int64_t length = 0;

  // Valid positions of row b are [begin, end), further filtered by the mask.
  void bounds(int64_t b, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = length;
    if (lengths != nullptr) {
      if (left) {
        *begin = length - lengths[b];
      } else {
        *end = lengths[b];
      }
    }
  }
  bool valid(int64_t b, int64_t pos) const { return mask == nullptr || mask[b * mask_row_stride + pos]; }
};

// Per-thread buffers of one row: its distances (64 W + 1: not valid), the candidates and the counting sort's
// buckets; `guess` is the previous row's k-th distance, where the next row's search starts.
struct RowBuffers {
  std::vector<uint16_t> dist;
  std::vector<int32_t> cand, order, start;
  int64_t guess = -1;
  RowBuffers(int64_t length, int64_t words)
      : dist(static_cast<size_t>(length)), cand(static_cast<size_t>(length) + 1),
        order(static_cast<size_t>(length)), start(static_cast<size_t>(64 * words + 2)) {}
};

// Number of positions at distance <= v (a loop the compiler vectorises).
inline int64_t count_below(const uint16_t* d, int64_t length, int64_t v) {
  int64_t c = 0;
  const uint16_t bound = static_cast<uint16_t>(v);
  for (int64_t lo = 0; lo < length; lo += 32768) {  // 16-bit counts (one vector lane per position) never wrap
    const int64_t hi = std::min(length, lo + 32768);
    uint16_t part = 0;
    for (int64_t pos = lo; pos < hi; ++pos) part = static_cast<uint16_t>(part + (d[pos] <= bound));
    c += part;
  }
  return c;
}

// The smallest distance v in [0, top] with at least `take` positions at or below it (take <= valid positions).
// The previous row's answer `hint` is tried first: rows of one batch often share it.
int64_t bound(const uint16_t* d, int64_t length, int64_t take, int64_t top, int64_t hint) {
  int64_t low = 0, high = top;
  if (hint >= 0 && hint <= top) {
    if (count_below(d, length, hint) >= take) {
      high = hint;
      if (hint == 0 || count_below(d, length, hint - 1) < take) return hint;
      high = hint - 1;
    } else {
      low = hint + 1;
    }
  }
  while (low < high) {
    const int64_t mid = (low + high) / 2;
    if (count_below(d, length, mid) >= take) {
      high = mid;
    } else {
      low = mid + 1;
    }
  }
  return low;
}

// Top-k of positions [begin, end) of one row: (distance ascending, position descending), -1 fill.
// sig(pos) is the signature at pos, or nullptr where the position is not valid.
template <int W, typename Sig>
void row_topk(const int64_t* q, int64_t words, int64_t length, int64_t begin, int64_t end, Sig sig,
              RowBuffers& buf, int64_t k, int64_t* idx, int32_t* dist) {
  const int64_t top = 64 * words;
  const uint16_t invalid = static_cast<uint16_t>(top + 1);
  uint16_t* d = buf.dist.data();
  std::fill(d, d + begin, invalid);
  std::fill(d + end, d + length, invalid);
  int64_t nvalid = 0;
  for (int64_t pos = begin; pos < end; ++pos) {  // independent loads: the table rows' misses overlap
    const int64_t* s = sig(pos);
    d[pos] = s == nullptr ? invalid : static_cast<uint16_t>(hamming<W>(q, s, words));
    nvalid += s != nullptr;
  }
  const int64_t take = std::min(k, nvalid);
  if (take > 0) {
    const int64_t v = bound(d, length, take, top, buf.guess);
    int32_t* cand = buf.cand.data();
    int64_t n = 0;
    for (int64_t pos = length - 1; pos >= 0; --pos) {  // newest first, without a branch
      cand[n] = static_cast<int32_t>(pos);
      n += d[pos] <= v;
    }
    int32_t* start = buf.start.data();  // a counting sort of the candidates by distance (stable)
    std::fill(start, start + v + 2, 0);
    for (int64_t i = 0; i < n; ++i) ++start[d[cand[i]] + 1];
    for (int64_t j = 1; j <= v + 1; ++j) start[j] += start[j - 1];
    int32_t* order = buf.order.data();
    for (int64_t i = 0; i < n; ++i) order[start[d[cand[i]]]++] = cand[i];
    for (int64_t p = 0; p < take; ++p) {
      idx[p] = order[p];
      dist[p] = d[order[p]];
    }
    buf.guess = dist[take - 1];
  }
  for (int64_t p = take; p < k; ++p) {
    idx[p] = -1;
    dist[p] = -1;
  }
}

Validity validity(const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask,
                  const std::string& padding_side, int64_t batch, int64_t length, at::Tensor* lengths_keep,
                  at::Tensor* mask_keep) {
  Validity v;
  v.length = length;
  v.left = padding_side == "left";
  if (lengths.has_value()) {
    *lengths_keep = lengths->to(at::kLong).contiguous();
    const int64_t* n = lengths_keep->data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      TORCH_CHECK_VALUE(n[b] >= 0 && n[b] <= length, "lengths must lie in 0..", length, ", got lengths[", b,
                        "] = ", n[b]);
    }
    v.lengths = n;
  }
  if (mask.has_value()) {
    *mask_keep = (mask->scalar_type() == at::kBool ? *mask : mask->ne(0)).contiguous();
    v.mask = mask_keep->data_ptr<bool>();
    v.mask_row_stride = mask_keep->dim() == 2 ? length : 0;
  }
  return v;
}

std::tuple<at::Tensor, at::Tensor> empty_results(const at::Tensor& query, int64_t k) {
  return {at::empty({query.size(0), k}, query.options().dtype(at::kLong)),
          at::empty({query.size(0), k}, query.options().dtype(at::kInt))};
}

// Rows per parallel task: about 64 Ki distances each.
int64_t grain(int64_t length, int64_t words) { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, length * words)); }

std::tuple<at::Tensor, at::Tensor> topk_hamming_cpu(const at::Tensor& query_in, const at::Tensor& keys_in, int64_t k,
                                                    const c10::optional<at::Tensor>& lengths,
                                                    const c10::optional<at::Tensor>& mask,
                                                    c10::string_view padding_side) {
  at::Tensor query = query_in.contiguous(), keys = keys_in.contiguous();
  const int64_t batch = query.size(0), words = query.size(1), length = keys.size(-2);
  const bool shared = keys.dim() == 2;
  at::Tensor lengths_keep, mask_keep;
  Validity v = validity(lengths, mask, std::string(padding_side), batch, length, &lengths_keep, &mask_keep);
  auto [idx, dist] = empty_results(query, k);
  const int64_t* q = query.data_ptr<int64_t>();
  const int64_t* s = keys.data_ptr<int64_t>();
  int64_t* out_idx = idx.data_ptr<int64_t>();
  int32_t* out_dist = dist.data_ptr<int32_t>();
  with_words(words, [&](auto w) {
    constexpr int W = decltype(w)::value;
    at::parallel_for(0, batch, grain(length, words), [&](int64_t first, int64_t last) {
      RowBuffers buf(length, words);
      for (int64_t b = first; b < last; ++b) {
        const int64_t* row = shared ? s : s + b * length * words;
        int64_t begin = 0, end = 0;
        v.bounds(b, &begin, &end);
        auto sig = [&](int64_t pos) -> const int64_t* { return v.valid(b, pos) ? row + pos * words : nullptr; };
        row_topk<W>(q + b * words, words, length, begin, end, sig, buf, k, out_idx + b * k, out_dist + b * k);
      }
    });
  });
  return {idx, dist};
}

// The ids as int64 (uint64 ids past 2**63 wrap, as in the Python front ends: outside the table either way).
template <typename T>
void ids_as_int64(const at::Tensor& ids, std::vector<int64_t>* out) {
  const T* p = ids.data_ptr<T>();
  out->resize(static_cast<size_t>(ids.numel()));
  for (int64_t i = 0; i < ids.numel(); ++i) (*out)[static_cast<size_t>(i)] = static_cast<int64_t>(p[i]);
}

// (pointer to int64 ids, storage kept alive): int64 ids are read in place, other dtypes converted once.
const int64_t* int64_ids(const at::Tensor& ids, std::vector<int64_t>* storage) {
  switch (ids.scalar_type()) {
    case at::kLong: return ids.data_ptr<int64_t>();
    case at::kInt: ids_as_int64<int32_t>(ids, storage); break;
    case at::kShort: ids_as_int64<int16_t>(ids, storage); break;
    case at::kChar: ids_as_int64<int8_t>(ids, storage); break;
    case at::kByte: ids_as_int64<uint8_t>(ids, storage); break;
    case at::kUInt16: ids_as_int64<uint16_t>(ids, storage); break;
    case at::kUInt32: ids_as_int64<uint32_t>(ids, storage); break;
    case at::kUInt64: ids_as_int64<uint64_t>(ids, storage); break;
    default: TORCH_CHECK(false, "ids must have an integer dtype, got ", ids.scalar_type());
  }
  return storage->data();
}

// The id as the user wrote it (uint64 ids past 2**63 are shown unsigned).
std::string id_text(int64_t id, at::ScalarType dtype) {
  return dtype == at::kUInt64 ? std::to_string(static_cast<uint64_t>(id)) : std::to_string(id);
}

std::tuple<at::Tensor, at::Tensor> topk_hamming_lookup_cpu(
    const at::Tensor& query_in, const at::Tensor& ids_in, const at::Tensor& table_in, int64_t k,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask, c10::optional<int64_t> padding_id,
    c10::string_view padding_side) {
  at::Tensor query = query_in.contiguous(), ids = ids_in.contiguous(), table = table_in.contiguous();
  const int64_t batch = query.size(0), words = query.size(1), length = ids.size(-1), nrows = table.size(0);
  const bool shared = ids.dim() == 1;
  at::Tensor lengths_keep, mask_keep;
  Validity v = validity(lengths, mask, std::string(padding_side), batch, length, &lengths_keep, &mask_keep);
  auto [idx, dist] = empty_results(query, k);
  std::vector<int64_t> id_storage;
  const int64_t* id = int64_ids(ids, &id_storage);
  const int64_t* q = query.data_ptr<int64_t>();
  const int64_t* t = table.data_ptr<int64_t>();
  int64_t* out_idx = idx.data_ptr<int64_t>();
  int32_t* out_dist = dist.data_ptr<int32_t>();
  const bool has_pad = padding_id.has_value();
  const int64_t pad = has_pad ? *padding_id : 0;
  // One sequence for every row: its signatures gathered once, contiguous (zeros at padding and bad ids).
  std::vector<int64_t> gathered;
  std::vector<uint8_t> kind;  // per shared position: 0 a table row, 1 padding, 2 outside the table
  if (shared) {
    gathered.assign(static_cast<size_t>(length * words), 0);
    kind.assign(static_cast<size_t>(length), 0);
    for (int64_t pos = 0; pos < length; ++pos) {
      const int64_t i = id[pos];
      if (has_pad && i == pad) {
        kind[static_cast<size_t>(pos)] = 1;
      } else if (i < 0 || i >= nrows) {
        kind[static_cast<size_t>(pos)] = 2;
      } else {
        std::copy(t + i * words, t + (i + 1) * words, gathered.begin() + pos * words);
      }
    }
  }
  // First bad position of each row (length: none); the error names the first row's.
  std::vector<int64_t> bad(static_cast<size_t>(batch), length);
  with_words(words, [&](auto w) {
    constexpr int W = decltype(w)::value;
    at::parallel_for(0, batch, grain(length, words), [&](int64_t first, int64_t last) {
      RowBuffers buf(length, words);
      for (int64_t b = first; b < last; ++b) {
        int64_t begin = 0, end = 0;
        v.bounds(b, &begin, &end);
        int64_t& first_bad = bad[static_cast<size_t>(b)];
        int64_t* row_idx = out_idx + b * k;
        int32_t* row_dist = out_dist + b * k;
        if (shared) {
          auto sig = [&](int64_t pos) -> const int64_t* {
            if (!v.valid(b, pos)) return nullptr;
            const uint8_t c = kind[static_cast<size_t>(pos)];
            if (c == 2) first_bad = std::min(first_bad, pos);
            return c == 0 ? gathered.data() + pos * words : nullptr;
          };
          row_topk<W>(q + b * words, words, length, begin, end, sig, buf, k, row_idx, row_dist);
        } else {
          const int64_t* row = id + b * length;
          auto sig = [&](int64_t pos) -> const int64_t* {
            const int64_t i = row[pos];
            if (!v.valid(b, pos) || (has_pad && i == pad)) return nullptr;
            if (i < 0 || i >= nrows) {
              first_bad = std::min(first_bad, pos);
              return nullptr;
            }
            return t + i * words;
          };
          row_topk<W>(q + b * words, words, length, begin, end, sig, buf, k, row_idx, row_dist);
        }
      }
    });
  });
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t pos = bad[static_cast<size_t>(b)];
    if (pos < length) {
      const std::string value = id_text((shared ? id : id + b * length)[pos], ids.scalar_type());
      const std::string where = shared ? "ids[" + std::to_string(pos) + "] (shared, met in batch row " +
                                             std::to_string(b) + ")"
                                       : "ids[" + std::to_string(b) + ", " + std::to_string(pos) + "]";
      TORCH_CHECK_INDEX(false, where, " = ", value, " is outside the table's rows [0, ", nrows, ")");
    }
  }
  return {idx, dist};
}

// Shapes only, for tracing (torch.export, symbolic batch sizes included): (B, k) int64 positions and
// int32 distances.
std::tuple<at::Tensor, at::Tensor> meta_results(const at::Tensor& query, int64_t k) {
  return {at::empty_symint({query.sym_size(0), c10::SymInt(k)}, query.options().dtype(at::kLong)),
          at::empty_symint({query.sym_size(0), c10::SymInt(k)}, query.options().dtype(at::kInt))};
}

std::tuple<at::Tensor, at::Tensor> topk_hamming_meta(const at::Tensor& query, const at::Tensor&, int64_t k,
                                                     const c10::optional<at::Tensor>&,
                                                     const c10::optional<at::Tensor>&, c10::string_view) {
  return meta_results(query, k);
}

std::tuple<at::Tensor, at::Tensor> topk_hamming_lookup_meta(const at::Tensor& query, const at::Tensor&,
                                                            const at::Tensor&, int64_t k,
                                                            const c10::optional<at::Tensor>&,
                                                            const c10::optional<at::Tensor>&, c10::optional<int64_t>,
                                                            c10::string_view) {
  return meta_results(query, k);
}

}  // namespace

TORCH_LIBRARY(etaretrieval_native, m) {
  m.def("topk_hamming(Tensor query, Tensor keys, int k, Tensor? lengths=None, Tensor? mask=None, "
        "str padding_side=\"right\") -> (Tensor, Tensor)");
  m.def("topk_hamming_lookup(Tensor query, Tensor ids, Tensor table, int k, Tensor? lengths=None, "
        "Tensor? mask=None, int? padding_id=None, str padding_side=\"right\") -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(etaretrieval_native, CPU, m) {
  m.impl("topk_hamming", &topk_hamming_cpu);
  m.impl("topk_hamming_lookup", &topk_hamming_lookup_cpu);
}

TORCH_LIBRARY_IMPL(etaretrieval_native, Meta, m) {
  m.impl("topk_hamming", &topk_hamming_meta);
  m.impl("topk_hamming_lookup", &topk_hamming_lookup_meta);
}
