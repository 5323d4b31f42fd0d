// Native CPU kernels of the top-K retrieval operators, for programs served without Python.
//
// Registers etaretrieval_native::topk_hamming and etaretrieval_native::topk_hamming_lookup with the
// arguments of etaretrieval::topk_hamming / topk_hamming_lookup: an AOTInductor package exported with
// etaretrieval.torch.decompositions(native=True) calls them, so a C++ program linked against this
// library (and libtorch) serves it at about the speed of the Numba kernels. The results equal the Numba
// kernels' bit for bit: positions ordered by (Hamming distance ascending, position descending), -1 past
// the valid positions, int32 distances.
//
// Per row: the distances of every position (uint16; 64 W + 1 marks a position that is not valid), the
// smallest distance v with k valid positions at or below it (a binary search of vectorised counts,
// started from the previous row's answer), the positions at or below v newest first, and a counting
// sort of those by distance. One sequence shared by every row is laid out word-major once per call,
// so that its distances are whole vectors (AVX2 popcount by nibble table where the compiler targets it).
//
// The Python wrappers (etaretrieval.torch.native) check the arguments with the etaretrieval operators'
// messages; the checks here keep direct calls safe, and the values only the data reveals are checked
// with the Numba drivers' messages: lengths outside 0..L (ValueError) and a valid position holding an id
// outside the table (IndexError).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kMaxWords = 16;  // etaretrieval.config.MAX_BITS / 64
constexpr int64_t kPrefetch = 32;  // table rows are prefetched this many positions ahead

// ---------------------------------------------------------------------------------------------------
// Argument checks (direct calls of the operators; the Python wrappers check first, with their messages)

void check_signatures(const at::Tensor& t, const char* name, int64_t dims_lo, int64_t dims_hi) {
  TORCH_CHECK(t.device().is_cpu(), "etaretrieval_native: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kLong, "etaretrieval_native: ", name, " must be int64 signature words, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() >= dims_lo && t.dim() <= dims_hi, "etaretrieval_native: ", name, " has ", t.dim(),
              " dimensions, expected ", dims_lo == dims_hi ? std::to_string(dims_lo) : "2 or 3");
}

void check_common(const at::Tensor& query, int64_t k, int64_t length, const c10::optional<at::Tensor>& lengths,
                  const c10::optional<at::Tensor>& mask, c10::string_view padding_side) {
  check_signatures(query, "query", 2, 2);
  TORCH_CHECK(query.size(1) >= 1 && query.size(1) <= kMaxWords, "etaretrieval_native: query must have 1..",
              kMaxWords, " words, got ", query.size(1));
  TORCH_CHECK(k >= 0, "etaretrieval_native: k must be >= 0, got ", k);
  TORCH_CHECK(length < (int64_t{1} << 31), "etaretrieval_native: sequences of 2**31 positions or more");
  TORCH_CHECK(padding_side == "left" || padding_side == "right",
              "etaretrieval_native: padding_side must be 'left' or 'right'");
  TORCH_CHECK(!(lengths.has_value() && mask.has_value()), "etaretrieval_native: pass lengths or mask, not both");
  const int64_t batch = query.size(0);
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->device().is_cpu() && at::isIntegralType(lengths->scalar_type(), false) &&
                    lengths->dim() == 1 && lengths->size(0) == batch,
                "etaretrieval_native: lengths must be a (B,) integer CPU tensor, B = ", batch);
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->device().is_cpu() && !at::isComplexType(mask->scalar_type()) &&
                    ((mask->dim() == 1 && mask->size(0) == length) ||
                     (mask->dim() == 2 && mask->size(0) == batch && mask->size(1) == length)),
                "etaretrieval_native: mask must be a real (B, L) or (L,) CPU tensor, B = ", batch, ", L = ", length);
  }
}

// ---------------------------------------------------------------------------------------------------
// Distances

// Set bits of a ^ b over W words (W > 0: known at compile time, so the loop unrolls; 0: `words`).
template <int W>
inline uint16_t hamming(const int64_t* a, const int64_t* b, int64_t words) {
  const int64_t n = W > 0 ? W : words;
  int32_t d = 0;
  for (int64_t w = 0; w < n; ++w) d += __builtin_popcountll(static_cast<uint64_t>(a[w] ^ b[w]));
  return static_cast<uint16_t>(d);
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

// Distances of `length` positions of word-major keys (word w of position p at keys_t[w * length + p]) to q.
void distances_word_major(const int64_t* q, int64_t words, const int64_t* keys_t, int64_t length, uint16_t* d) {
  int64_t pos = 0;
#if defined(__AVX2__)
  // Per byte: set bits by a 16-entry nibble table, summed over the words (at most 8 x 16 = 128 per byte);
  // psadbw then sums each position's 8 bytes.
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i gather_low = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  for (; pos + 4 <= length; pos += 4) {
    __m256i bytes = zero;
    for (int64_t w = 0; w < words; ++w) {
      const __m256i x = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys_t + w * length + pos)), _mm256_set1_epi64x(q[w]));
      const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, nibble));
      const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble));
      bytes = _mm256_add_epi8(bytes, _mm256_add_epi8(lo, hi));
    }
    const __m256i sums = _mm256_sad_epu8(bytes, zero);  // 4 x uint64, each < 2**16
    const __m128i low = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sums, gather_low));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(d + pos), _mm_packus_epi32(low, low));
  }
#endif
  for (; pos < length; ++pos) {
    int32_t s = 0;
    for (int64_t w = 0; w < words; ++w) s += __builtin_popcountll(static_cast<uint64_t>(keys_t[w * length + pos] ^ q[w]));
    d[pos] = static_cast<uint16_t>(s);
  }
}

// ---------------------------------------------------------------------------------------------------
// Validity of positions: a (B, L) / (L,) mask or (B,) lengths (at most one), and the padding side

struct Validity {
  const bool* mask = nullptr;
  int64_t mask_row_stride = 0;  // 0: one (L,) mask for every row
  std::vector<int64_t> lengths;
  bool left = false;
  int64_t length = 0;
  at::Tensor mask_keep;  // a bool copy of a mask of another dtype

  // Valid positions of row b lie in [begin, end), further filtered by the mask.
  void bounds(int64_t b, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = length;
    if (!lengths.empty()) {
      if (left) {
        *begin = length - lengths[static_cast<size_t>(b)];
      } else {
        *end = lengths[static_cast<size_t>(b)];
      }
    }
  }
  const bool* mask_row(int64_t b) const { return mask == nullptr ? nullptr : mask + b * mask_row_stride; }
};

template <typename T>
void read_lengths(const at::Tensor& t, int64_t length, std::vector<int64_t>* out) {
  const at::Tensor c = t.contiguous();
  const T* p = c.data_ptr<T>();
  out->resize(static_cast<size_t>(c.numel()));
  for (int64_t b = 0; b < c.numel(); ++b) {
    // Compared in the lengths' own type: a uint64 length past 2**63 is out of range, and shown unsigned.
    bool negative = false;
    if constexpr (std::is_signed_v<T>) negative = p[b] < 0;
    TORCH_CHECK_VALUE(!negative && static_cast<uint64_t>(p[b]) <= static_cast<uint64_t>(length),
                      "lengths must lie in 0..", length, ", got lengths[", b, "] = ", +p[b]);
    (*out)[static_cast<size_t>(b)] = static_cast<int64_t>(p[b]);
  }
}

Validity validity(const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask,
                  c10::string_view padding_side, int64_t length) {
  Validity v;
  v.length = length;
  v.left = padding_side == "left";
  if (lengths.has_value()) {
    switch (lengths->scalar_type()) {
      case at::kLong: read_lengths<int64_t>(*lengths, length, &v.lengths); break;
      case at::kInt: read_lengths<int32_t>(*lengths, length, &v.lengths); break;
      case at::kShort: read_lengths<int16_t>(*lengths, length, &v.lengths); break;
      case at::kChar: read_lengths<int8_t>(*lengths, length, &v.lengths); break;
      case at::kByte: read_lengths<uint8_t>(*lengths, length, &v.lengths); break;
      case at::kUInt16: read_lengths<uint16_t>(*lengths, length, &v.lengths); break;
      case at::kUInt32: read_lengths<uint32_t>(*lengths, length, &v.lengths); break;
      case at::kUInt64: read_lengths<uint64_t>(*lengths, length, &v.lengths); break;
      default: TORCH_CHECK(false, "etaretrieval_native: lengths must have an integer dtype");
    }
  }
  if (mask.has_value()) {
    v.mask_keep = (mask->scalar_type() == at::kBool ? *mask : mask->ne(0)).contiguous();
    v.mask = v.mask_keep.data_ptr<bool>();
    v.mask_row_stride = v.mask_keep.dim() == 2 ? length : 0;
  }
  return v;
}

// Marks the positions of a row that are not valid: outside [begin, end), masked out, or `excluded`
// (padding or ids outside the table of a shared sequence; may be null).
void invalidate(uint16_t* d, int64_t length, int64_t begin, int64_t end, const bool* mask, const uint8_t* excluded,
                uint16_t invalid) {
  std::fill(d, d + begin, invalid);
  std::fill(d + end, d + length, invalid);
  if (mask != nullptr) {
    for (int64_t pos = begin; pos < end; ++pos) d[pos] = mask[pos] ? d[pos] : invalid;
  }
  if (excluded != nullptr) {
    for (int64_t pos = begin; pos < end; ++pos) d[pos] = excluded[pos] ? invalid : d[pos];
  }
}

// ---------------------------------------------------------------------------------------------------
// Selection

// Per-thread buffers: a row's distances, its candidates, the counting sort's buckets; `guess` is the
// previous row's k-th distance, where the next row's search starts.
struct RowBuffers {
  std::vector<uint16_t> dist;
  std::vector<int32_t> cand, order, start;
  int64_t guess = -1;
  RowBuffers(int64_t length, int64_t words)
      : dist(static_cast<size_t>(length)), cand(static_cast<size_t>(length) + 1), order(static_cast<size_t>(length)),
        start(static_cast<size_t>(64 * words + 2)) {}
};

// Number of positions at distance <= v (16-bit lanes, vectorised by the compiler).
inline int64_t count_below(const uint16_t* d, int64_t length, int64_t v) {
  int64_t c = 0;
  const uint16_t bound = static_cast<uint16_t>(v);
  for (int64_t lo = 0; lo < length; lo += 32768) {  // a 16-bit count never wraps within a block
    const int64_t hi = std::min(length, lo + 32768);
    uint16_t part = 0;
    for (int64_t pos = lo; pos < hi; ++pos) part = static_cast<uint16_t>(part + (d[pos] <= bound));
    c += part;
  }
  return c;
}

// The smallest distance v in [0, top] with at least `take` positions at or below it (take <= the valid
// positions). The previous row's answer `hint` is tried first: rows of one batch often share it.
int64_t bound(const uint16_t* d, int64_t length, int64_t take, int64_t top, int64_t hint) {
  int64_t low = 0, high = top;
  if (hint >= 0 && hint <= top) {
    if (count_below(d, length, hint) >= take) {
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

// The positions at distance <= v into cand, newest first; returns their number (cand holds length + 1).
int64_t candidates(const uint16_t* d, int64_t length, int64_t v, int32_t* cand) {
  int64_t n = 0;
  int64_t pos = length - 1;
#if defined(__AVX2__)
  const int64_t blocks = length / 16 * 16;
  for (; pos >= blocks; --pos) {  // the newest positions past the last whole block, without a branch
    cand[n] = static_cast<int32_t>(pos);
    n += d[pos] <= v;
  }
  const __m256i bound = _mm256_set1_epi16(static_cast<int16_t>(v));
  for (int64_t block = blocks - 16; block >= 0; block -= 16) {  // 16 positions per compare; most hold none
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + block));
    uint32_t bits = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_min_epu16(x, bound), x)));
    while (bits != 0) {  // two bits per position; the highest first
      const int high = 31 - __builtin_clz(bits);
      cand[n++] = static_cast<int32_t>(block + high / 2);
      bits &= ~(3u << (high & ~1));
    }
  }
  return n;
#else
  for (; pos >= 0; --pos) {  // newest first, without a branch
    cand[n] = static_cast<int32_t>(pos);
    n += d[pos] <= v;
  }
  return n;
#endif
}

// Top-k of a row's distances d (64 W + 1: not valid): (distance ascending, position descending), -1 fill.
void select_row(RowBuffers& buf, int64_t length, int64_t words, int64_t k, int64_t* idx, int32_t* dist) {
  const int64_t top = 64 * words;
  const uint16_t* d = buf.dist.data();
  const int64_t take = k == 0 ? 0 : std::min(k, count_below(d, length, top));
  if (take > 0) {
    const int64_t v = bound(d, length, take, top, buf.guess);
    int32_t* cand = buf.cand.data();
    const int64_t n = candidates(d, length, v, cand);
    int32_t* start = buf.start.data();  // a stable counting sort of the candidates by distance
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

std::tuple<at::Tensor, at::Tensor> empty_results(const at::Tensor& query, int64_t k) {
  return {at::empty({query.size(0), k}, query.options().dtype(at::kLong)),
          at::empty({query.size(0), k}, query.options().dtype(at::kInt))};
}

// Rows per parallel task: about 64 Ki distances each.
int64_t grain(int64_t length, int64_t words) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, length * words));
}

// Runs row(b, buf) for every row over libtorch's threads, one RowBuffers per task.
template <typename Row>
void for_rows(int64_t batch, int64_t length, int64_t words, Row row) {
  at::parallel_for(0, batch, grain(length, words), [&](int64_t first, int64_t last) {
    RowBuffers buf(length, words);
    for (int64_t b = first; b < last; ++b) row(b, buf);
  });
}

// Top-k of every row against one word-major sequence (`excluded` positions are never valid; may be null).
void shared_topk(const int64_t* q, int64_t batch, int64_t words, const int64_t* keys_t, int64_t length,
                 const uint8_t* excluded, const Validity& v, int64_t k, int64_t* idx, int32_t* dist) {
  const uint16_t invalid = static_cast<uint16_t>(64 * words + 1);
  for_rows(batch, length, words, [&](int64_t b, RowBuffers& buf) {
    int64_t begin = 0, end = 0;
    v.bounds(b, &begin, &end);
    distances_word_major(q + b * words, words, keys_t, length, buf.dist.data());
    invalidate(buf.dist.data(), length, begin, end, v.mask_row(b), excluded, invalid);
    select_row(buf, length, words, k, idx + b * k, dist + b * k);
  });
}

// ---------------------------------------------------------------------------------------------------
// Operators

std::tuple<at::Tensor, at::Tensor> topk_hamming_cpu(const at::Tensor& query_in, const at::Tensor& keys_in, int64_t k,
                                                    const c10::optional<at::Tensor>& lengths,
                                                    const c10::optional<at::Tensor>& mask,
                                                    c10::string_view padding_side) {
  check_signatures(keys_in, "keys", 2, 3);
  const int64_t length = keys_in.size(-2);
  check_common(query_in, k, length, lengths, mask, padding_side);
  const int64_t batch = query_in.size(0), words = query_in.size(1);
  TORCH_CHECK(keys_in.size(-1) == words && (keys_in.dim() == 2 || keys_in.size(0) == batch),
              "etaretrieval_native: keys must have shape (B, L, W) or (L, W) with the query's B = ", batch,
              " and W = ", words, ", got ", keys_in.sizes());
  const at::Tensor query = query_in.contiguous();
  const Validity v = validity(lengths, mask, padding_side, length);
  auto [idx, dist] = empty_results(query, k);
  const int64_t* q = query.data_ptr<int64_t>();
  int64_t* out_idx = idx.data_ptr<int64_t>();
  int32_t* out_dist = dist.data_ptr<int32_t>();
  if (batch == 0) return {idx, dist};
  if (keys_in.dim() == 2) {  // one sequence for every row: word-major once
    const at::Tensor keys_t = keys_in.t().contiguous();
    shared_topk(q, batch, words, keys_t.data_ptr<int64_t>(), length, nullptr, v, k, out_idx, out_dist);
    return {idx, dist};
  }
  const at::Tensor keys = keys_in.contiguous();
  const int64_t* s = keys.data_ptr<int64_t>();
  const uint16_t invalid = static_cast<uint16_t>(64 * words + 1);
  with_words(words, [&](auto w) {
    constexpr int W = decltype(w)::value;
    for_rows(batch, length, words, [&](int64_t b, RowBuffers& buf) {
      int64_t begin = 0, end = 0;
      v.bounds(b, &begin, &end);
      uint16_t* d = buf.dist.data();
      const int64_t* row = s + b * length * words;
      for (int64_t pos = begin; pos < end; ++pos) d[pos] = hamming<W>(q + b * words, row + pos * words, words);
      invalidate(d, length, begin, end, v.mask_row(b), nullptr, invalid);
      select_row(buf, length, words, k, out_idx + b * k, out_dist + b * k);
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

// Pointer to the ids as int64: int64 ids are read in place, other dtypes converted once into `storage`.
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
    default: TORCH_CHECK(false, "etaretrieval_native: ids must have an integer dtype, got ", ids.scalar_type());
  }
  return storage->data();
}

// Raises the Numba driver's IndexError for the valid position `pos` of row `b` holding an id outside the table.
[[noreturn]] void bad_id(int64_t b, int64_t pos, int64_t id, at::ScalarType dtype, bool shared, int64_t nrows) {
  const std::string value =
      dtype == at::kUInt64 ? std::to_string(static_cast<uint64_t>(id)) : std::to_string(id);  // as the user wrote it
  const std::string where =
      shared ? "ids[" + std::to_string(pos) + "] (shared, met in batch row " + std::to_string(b) + ")"
             : "ids[" + std::to_string(b) + ", " + std::to_string(pos) + "]";
  TORCH_CHECK_INDEX(false, where, " = ", value, " is outside the table's rows [0, ", nrows, ")");
  __builtin_unreachable();
}

std::tuple<at::Tensor, at::Tensor> topk_hamming_lookup_cpu(
    const at::Tensor& query_in, const at::Tensor& ids_in, const at::Tensor& table_in, int64_t k,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& mask, c10::optional<int64_t> padding_id,
    c10::string_view padding_side) {
  TORCH_CHECK(ids_in.device().is_cpu() && at::isIntegralType(ids_in.scalar_type(), false) &&
                  (ids_in.dim() == 1 || ids_in.dim() == 2),
              "etaretrieval_native: ids must be a (B, L) or (L,) integer CPU tensor");
  const int64_t length = ids_in.size(-1);
  check_common(query_in, k, length, lengths, mask, padding_side);
  check_signatures(table_in, "table", 2, 2);
  const int64_t batch = query_in.size(0), words = query_in.size(1), nrows = table_in.size(0);
  TORCH_CHECK(table_in.size(1) == words, "etaretrieval_native: table must have the query's W = ", words,
              " words, got ", table_in.size(1));
  TORCH_CHECK(ids_in.dim() == 1 || ids_in.size(0) == batch, "etaretrieval_native: ids must have B = ", batch,
              " rows, got ", ids_in.size(0));
  const at::Tensor query = query_in.contiguous(), ids = ids_in.contiguous(), table = table_in.contiguous();
  const Validity v = validity(lengths, mask, padding_side, length);
  auto [idx, dist] = empty_results(query, k);
  if (batch == 0) return {idx, dist};
  std::vector<int64_t> id_storage;
  const int64_t* id = int64_ids(ids, &id_storage);
  const int64_t* q = query.data_ptr<int64_t>();
  const int64_t* t = table.data_ptr<int64_t>();
  int64_t* out_idx = idx.data_ptr<int64_t>();
  int32_t* out_dist = dist.data_ptr<int32_t>();
  const bool has_pad = padding_id.has_value();
  const int64_t pad = has_pad ? *padding_id : 0;
  const uint16_t invalid = static_cast<uint16_t>(64 * words + 1);
  if (ids.dim() == 1) {  // one sequence for every row: its signatures gathered once, word-major
    std::vector<int64_t> keys_t(static_cast<size_t>(length * words), 0);
    std::vector<uint8_t> excluded(static_cast<size_t>(length), 0);  // padding, or outside the table
    std::vector<int64_t> outside;
    for (int64_t pos = 0; pos < length; ++pos) {
      const int64_t i = id[pos];
      if (has_pad && i == pad) {
        excluded[static_cast<size_t>(pos)] = 1;
      } else if (i < 0 || i >= nrows) {
        excluded[static_cast<size_t>(pos)] = 1;
        outside.push_back(pos);
      } else {
        for (int64_t w = 0; w < words; ++w) keys_t[static_cast<size_t>(w * length + pos)] = t[i * words + w];
      }
    }
    for (int64_t b = 0; b < batch && !outside.empty(); ++b) {  // the first row where such an id is valid
      int64_t begin = 0, end = 0;
      v.bounds(b, &begin, &end);
      const bool* m = v.mask_row(b);
      for (int64_t pos : outside) {
        if (pos >= begin && pos < end && (m == nullptr || m[pos])) bad_id(b, pos, id[pos], ids.scalar_type(), true, nrows);
      }
    }
    shared_topk(q, batch, words, keys_t.data(), length, excluded.data(), v, k, out_idx, out_dist);
    return {idx, dist};
  }
  std::vector<int64_t> bad(static_cast<size_t>(batch), length);  // each row's first bad position (length: none)
  const uint64_t rows = static_cast<uint64_t>(std::max<int64_t>(nrows, 1));
  const int64_t* table_or_zero = nrows > 0 ? t : nullptr;
  const std::vector<int64_t> zero_row(static_cast<size_t>(words), 0);  // stands in for an empty table
  with_words(words, [&](auto w) {
    constexpr int W = decltype(w)::value;
    for_rows(batch, length, words, [&](int64_t b, RowBuffers& buf) {
      int64_t begin = 0, end = 0;
      v.bounds(b, &begin, &end);
      const bool* m = v.mask_row(b);
      const int64_t* row = id + b * length;
      const int64_t* qb = q + b * words;
      uint16_t* d = buf.dist.data();
      int64_t first_bad = length;
      for (int64_t pos = begin; pos < end; ++pos) {  // no branch on the ids: the table rows' loads overlap
        if (pos + kPrefetch < end) {
          const int64_t ahead = row[pos + kPrefetch];
          __builtin_prefetch(t + (static_cast<uint64_t>(ahead) < rows ? ahead : 0) * words);
        }
        const int64_t i = row[pos];
        const bool valid = (m == nullptr || m[pos]) && !(has_pad && i == pad);
        const bool inside = static_cast<uint64_t>(i) < rows && nrows > 0;
        const int64_t* sig = table_or_zero != nullptr ? t + (inside ? i : 0) * words : zero_row.data();
        const uint16_t dp = hamming<W>(qb, sig, words);
        d[pos] = valid && inside ? dp : invalid;
        if (valid && !inside) first_bad = std::min(first_bad, pos);
      }
      invalidate(d, length, begin, end, nullptr, nullptr, invalid);
      bad[static_cast<size_t>(b)] = first_bad;
      if (first_bad == length) select_row(buf, length, words, k, out_idx + b * k, out_dist + b * k);
    });
  });
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t pos = bad[static_cast<size_t>(b)];
    if (pos < length) bad_id(b, pos, id[b * length + pos], ids.scalar_type(), false, nrows);
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
