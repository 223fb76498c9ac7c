// The host's page plans (page_plan.h) and step tables (step_inputs.h) replayed on the
// CPU with the kernels' CPU references, in the order real GPU decoding runs them
// (generation.cc, generation_step.cc): prefill placement, then per step promotions,
// a selection recalled from the pages stored so far (ApplyRecallRef, or the oracle's
// SelectedToTableRef), with a resident cache the selection's slots written into the
// table (SelectedToTableRef, as TakeAttendSlots does), the append, attention's page
// table, the filled pages stored.
// Every element of K and V carries a tag naming its (sequence, logical page, token,
// head, K or V), so a page in the wrong place, a token missing from a page, or a page
// stored from the wrong pool page fails the test where it happens.
#include "worker/freekv_gpu/page_plan.h"

#include <algorithm>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/select.h"
#include "worker/freekv_gpu/generate_ops.h"
#include "worker/freekv_gpu/step_inputs.h"

namespace freekv::gpu {
namespace {

constexpr int32_t kHeadDim = 8;  // lanes 0..4 hold the tag

// Small integers are exact in bf16.
struct Tag {
  int32_t seq, page, token, head, kv;
  bool operator==(const Tag& o) const {
    return seq == o.seq && page == o.page && token == o.token && head == o.head && kv == o.kv;
  }
  std::string str() const {
    return absl::StrCat("(seq ", seq, " page ", page, " token ", token, " head ", head,
                        kv ? " V)" : " K)");
  }
};

void WriteTag(BFloat16* row, const Tag& t) {
  const int32_t lanes[] = {t.seq, t.page, t.token, t.head, t.kv};
  for (int32_t d = 0; d < kHeadDim; ++d) {
    row[d] = kernels::ToBFloat16(d < 5 ? static_cast<float>(lanes[d]) : 0.0f);
  }
}

Tag ReadTag(const BFloat16* row) {
  auto lane = [&](int d) { return static_cast<int32_t>(kernels::ToFloat(row[d])); };
  return {lane(0), lane(1), lane(2), lane(3), lane(4)};
}

struct Case {
  const char* name;
  ResidentLayout layout;
  bool sparse = true;
  bool over_full = false;
  std::vector<int64_t> prompts;
  int32_t steps = 0;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class PagePlanReplay : public ::testing::TestWithParam<Case> {
 protected:
  static constexpr int32_t kPage = 4, kHeads = 2;

  void SetUp() override {
    const Case& c = GetParam();
    shape_.page_tokens = kPage;
    shape_.num_kv_heads = kHeads;
    shape_.layout = c.layout;
    shape_.sparse = c.sparse;
    shape_.over_full = c.over_full;
    const int64_t longest = *std::max_element(c.prompts.begin(), c.prompts.end());
    shape_.full_pages = static_cast<int32_t>((longest + c.steps) / kPage + 1);
    batch_ = static_cast<int32_t>(c.prompts.size());
    const int32_t pages = batch_ * (shape_.resident() ? c.layout.pages_per_seq()
                                                       : shape_.full_pages);
    const int64_t page_elems = int64_t{kPage} * kHeads * kHeadDim;
    // K and V interleaved per page, as LayerState's pool; poisoned with page -1.
    pool_data_.resize(size_t(pages) * 2 * page_elems);
    for (size_t r = 0; r < pool_data_.size(); r += kHeadDim) {
      WriteTag(&pool_data_[r], {-1, -1, -1, -1, -1});
    }
    pool_ = {pool_data_.data(), pool_data_.data() + page_elems, 2 * page_elems, pages, kPage,
             kHeads, kHeadDim};
    resident_.assign(size_t(batch_) * kHeads * c.layout.capacity(), -1);
  }

  const kernels::PagedKv<const BFloat16> Const() const {
    return {pool_.k, pool_.v, pool_.page_stride, pool_.num_pages, kPage, kHeads, kHeadDim};
  }

  // Every token of page `page` of `kv`, head `head`, K and V, tagged (seq, logical).
  template <typename T>
  void ExpectPage(const kernels::PagedKv<T>& kv, int32_t page, int32_t tokens, int32_t seq,
                  int32_t logical, int32_t head, const std::string& where) {
    for (int32_t t = 0; t < tokens; ++t) {
      for (int32_t which = 0; which < 2; ++which) {
        const BFloat16* row = (which ? kv.v : kv.k) + kv.offset(page, t, head);
        const Tag want{seq, logical, t, head, which};
        ASSERT_EQ(ReadTag(row), want) << where << ": pool page " << page << " token " << t
                                      << " holds " << ReadTag(row).str() << ", not "
                                      << want.str();
      }
    }
  }

  // The kvservice's copy of a page: its K and V, every head (what Offload stores).
  void Store(const kernels::PagedKv<const BFloat16>& kv, int32_t page, int32_t seq,
             int32_t logical, const std::string& where) {
    for (int32_t h = 0; h < kHeads; ++h) ExpectPage(kv, page, kPage, seq, logical, h, where);
    std::vector<BFloat16>& copy = store_[{seq, logical}];
    copy.assign(kv.k + int64_t{page} * kv.page_stride,
                kv.k + int64_t{page} * kv.page_stride + kv.page_elems());
    copy.insert(copy.end(), kv.v + int64_t{page} * kv.page_stride,
                kv.v + int64_t{page} * kv.page_stride + kv.page_elems());
  }

  void Prefill(int32_t b, int64_t tokens) {
    const int32_t cap = static_cast<int32_t>((tokens + kPage - 1) / kPage);
    const int64_t row = int64_t{kHeads} * kHeadDim;
    std::vector<BFloat16> k(size_t(cap) * kPage * row), v(k.size());
    for (int64_t i = 0; i < int64_t{cap} * kPage; ++i) {
      for (int32_t h = 0; h < kHeads; ++h) {
        const bool real = i < tokens;
        WriteTag(&k[i * row + h * kHeadDim],
                 real ? Tag{b, int32_t(i / kPage), int32_t(i % kPage), h, 0}
                      : Tag{-1, -1, -1, -1, -1});
        WriteTag(&v[i * row + h * kHeadDim],
                 real ? Tag{b, int32_t(i / kPage), int32_t(i % kPage), h, 1}
                      : Tag{-1, -1, -1, -1, -1});
      }
    }
    const kernels::PagedKv<const BFloat16> prefill{k.data(), v.data(), kPage * row, cap,
                                                   kPage,    kHeads,   kHeadDim};
    const PrefillPlan plan = PlanPrefill(shape_, b, tokens);
    ASSERT_TRUE(CopyPagesRef(prefill, plan.src, pool_, plan.dst).ok());
    ASSERT_TRUE(ScatterWordsRef(absl::MakeSpan(resident_), plan.resident_index,
                                plan.resident_page)
                    .ok());
    for (int32_t p : plan.kept) Store(prefill, p, b, p, absl::StrCat("prefill of ", b));
  }

  // Per (sequence, KV head): `slots` candidates picked at random (all when they fit).
  std::vector<std::vector<int32_t>> Pick(const std::vector<PageSplit>& splits) {
    std::vector<std::vector<int32_t>> picks;
    for (int32_t b = 0; b < batch_; ++b) {
      for (int32_t h = 0; h < kHeads; ++h) {
        std::vector<int32_t> c;
        for (int64_t p = splits[b].sink_end; p < splits[b].window_begin; ++p) c.push_back(p);
        std::shuffle(c.begin(), c.end(), rng_);
        c.resize(splits[b].slots);
        std::sort(c.begin(), c.end());
        picks.push_back(c);
      }
    }
    return picks;
  }

  // The picks as TopKPages writes a selection: [list][k], -1 past each list's picks.
  std::vector<int32_t> Selected(const std::vector<std::vector<int32_t>>& picks) const {
    const int32_t k = shape_.layout.selected;
    std::vector<int32_t> selected(picks.size() * k, -1);
    for (size_t list = 0; list < picks.size(); ++list) {
      std::copy(picks[list].begin(), picks[list].end(), selected.begin() + list * k);
    }
    return selected;
  }

  // Recalls what the picks lack, from the pages stored so far, into the slots the
  // selection's diff (kernels/select.h ResidentDiffRef) names, as the driver's apply
  // does. Returns the diff's attend slots ([list][k]).
  std::vector<int32_t> Recall(const std::vector<PageSplit>& splits,
                              const std::vector<std::vector<int32_t>>& picks) {
    const int32_t k = shape_.layout.selected, capacity = shape_.layout.capacity();
    const size_t lists = picks.size();
    std::vector<int32_t> begin, count;
    int32_t most = 1;
    for (const PageSplit& sp : splits) {
      begin.push_back(sp.sink_end);
      count.push_back(sp.candidates);
      most = std::max(most, sp.candidates);
    }
    // Equal scores: victims are empty slots, then unpicked pages, lowest slot first.
    const std::vector<float> scores(lists * most, 0.0f);
    std::vector<int32_t> pages(lists * k), slots(lists * k), counts(lists), attend(lists * k);
    EXPECT_TRUE(kernels::ResidentDiffRef(Selected(picks), resident_, capacity, scores, kHeads,
                                         {begin, count, most}, k, {},
                                         {absl::MakeSpan(pages), absl::MakeSpan(slots),
                                          absl::MakeSpan(counts), absl::MakeSpan(attend)})
                    .ok());
    const int64_t half = int64_t{kPage} * kHeadDim;
    const int64_t page_elems = int64_t{kPage} * kHeads * kHeadDim;
    std::vector<BFloat16> staging(lists * k * 2 * half);
    for (size_t list = 0; list < lists; ++list) {
      const int32_t b = static_cast<int32_t>(list / kHeads), h = list % kHeads;
      // A sequence whose candidates the slots (a cache's included) all hold keeps every
      // page on the GPU: nothing to recall.
      if (splits[b].candidates <= capacity) {
        EXPECT_EQ(counts[list], 0) << "sequence " << b;
      }
      for (int32_t j = 0; j < counts[list]; ++j) {
        const int32_t p = pages[list * k + j];
        if (!store_.count({b, p})) {
          ADD_FAILURE() << "sequence " << b << " page " << p
                        << " is picked but was never stored";
          return {};
        }
        const std::vector<BFloat16>& page = store_[{b, p}];
        for (int32_t t = 0; t < kPage; ++t) {
          for (int32_t which = 0; which < 2; ++which) {
            std::copy_n(&page[which * page_elems + (t * kHeads + h) * kHeadDim], kHeadDim,
                        &staging[(list * k + j) * 2 * half + which * half + t * kHeadDim]);
          }
        }
      }
    }
    EXPECT_TRUE(ApplyRecallRef(staging, {pages, slots, counts}, {}, pool_, shape_.layout,
                               absl::MakeSpan(resident_))
                    .ok());
    return attend;
  }

  void Step(int32_t t) {
    const Case& c = GetParam();
    std::vector<int64_t> positions;
    for (int64_t len : c.prompts) positions.push_back(len + t);
    const StepJobs jobs = StepJobs::Plan(shape_, positions);
    const absl::Span<const int32_t> flat = jobs.flat();
    auto part = [&](size_t at, size_t n) { return flat.subspan(at, n); };
    const size_t n = jobs.promotions(), r = jobs.resident_writes(), f = jobs.fills();
    ASSERT_LE(flat.size(), StepJobs::Capacity(batch_, kHeads));
    // A page that leaves the window may be selected at once: it must be stored.
    for (int32_t b = 0; b < batch_ && shape_.sparse; ++b) {
      const int64_t leaving = positions[b] / kPage - c.layout.window;
      if (positions[b] % kPage == 0 && leaving >= c.layout.sink) {
        ASSERT_TRUE(store_.count({b, int32_t(leaving)})) << "sequence " << b << " step " << t;
      }
    }
    ASSERT_TRUE(CopyPagesRef(Const(), part(jobs.promote_src_at(), n), pool_,
                             part(jobs.promote_dst_at(), n))
                    .ok());
    ASSERT_TRUE(ScatterWordsRef(absl::MakeSpan(resident_), part(jobs.resident_index_at(), r),
                                part(jobs.resident_page_at(), r))
                    .ok());
    std::vector<PageSplit> splits;
    for (int64_t pos : positions) splits.push_back(SplitAt(pos, kPage, c.layout));
    const std::vector<std::vector<int32_t>> picks = Pick(splits);
    const std::vector<int32_t> attend =
        shape_.resident() ? Recall(splits, picks) : std::vector<int32_t>{};
    if (HasFailure()) return;

    const StepShape step = StepShapeAt(shape_, positions, t);
    absl::StatusOr<StepInputs> built = StepInputs::Build(step);
    ASSERT_TRUE(built.ok()) << built.status();
    std::vector<int32_t> in(built->all().begin(), built->all().end());
    const StepInputs& s = *built;
    if (step.kind == TableKind::kSelectedOverFull) {
      ASSERT_TRUE(SelectedToTableRef(
                      Selected(picks), c.layout.selected, kHeads,
                      SeqPages::Full(shape_.full_pages),
                      absl::MakeConstSpan(in).subspan(s.selected_start_at(), s.num_lists()),
                      absl::MakeSpan(in).subspan(s.indices_at(), s.indices_size()))
                      .ok());
    }
    if (shape_.resident() && c.layout.cache > 0) {
      const ResidentLayout& lay = c.layout;
      ASSERT_TRUE(SelectedToTableRef(
                      attend, lay.selected, kHeads, {lay.pages_per_seq(), lay.sink, lay.capacity()},
                      absl::MakeConstSpan(in).subspan(s.selected_start_at(), s.num_lists()),
                      absl::MakeSpan(in).subspan(s.indices_at(), s.indices_size()))
                      .ok());
    }
    // The new token of every head, K and V.
    std::vector<BFloat16> k(size_t(batch_) * kHeads * kHeadDim), v(k.size());
    for (int32_t b = 0; b < batch_; ++b) {
      for (int32_t h = 0; h < kHeads; ++h) {
        const Tag tag{b, int32_t(positions[b] / kPage), int32_t(positions[b] % kPage), h, 0};
        WriteTag(&k[(b * kHeads + h) * kHeadDim], tag);
        WriteTag(&v[(b * kHeads + h) * kHeadDim], {tag.seq, tag.page, tag.token, h, 1});
      }
    }
    const absl::Span<const int32_t> all(in);
    ASSERT_TRUE(AppendKvRef(k, v, all.subspan(s.append_pages_at(), batch_),
                            all.subspan(s.append_tokens_at(), batch_), pool_)
                    .ok());
    CheckTable(t, splits, picks, all, s);
    if (HasFatalFailure()) return;
    for (size_t i = 0; i < f; ++i) {
      const int32_t seq = flat[jobs.fill_seq_at() + i], logical = flat[jobs.fill_logical_at() + i];
      ASSERT_EQ(std::make_pair(seq, int64_t{logical}), jobs.filled()[i]);
      Store(Const(), flat[jobs.fill_pool_at() + i], seq, logical,
            absl::StrCat("step ", t, " fill ", i));
    }
  }

  // Every list reads the pages its policy attends to, each whole (the last one up to
  // the new token).
  void CheckTable(int32_t t, const std::vector<PageSplit>& splits,
                  const std::vector<std::vector<int32_t>>& picks, absl::Span<const int32_t> all,
                  const StepInputs& s) {
    const bool per_head = GetParam().sparse;
    for (int32_t list = 0; list < s.num_lists(); ++list) {
      const int32_t b = per_head ? list / kHeads : list;
      const PageSplit& sp = splits[b];
      // Sinks, the selected pages (in slot order for a resident pool without a cache:
      // the slots the picks landed in; the picks' order with one), the window.
      std::vector<int32_t> want;
      for (int32_t p = 0; p < sp.sink_end; ++p) want.push_back(p);
      if (!per_head) {
        for (int64_t p = sp.sink_end; p < sp.window_begin; ++p) want.push_back(p);
      } else if (shape_.resident() && shape_.layout.cache == 0) {
        const int32_t* row = &resident_[size_t(list) * shape_.layout.selected];
        std::vector<int32_t> held(row, row + sp.slots);
        want.insert(want.end(), held.begin(), held.end());
        std::sort(held.begin(), held.end());
        ASSERT_EQ(held, picks[list]) << "step " << t << " list " << list;
      } else {
        want.insert(want.end(), picks[list].begin(), picks[list].end());
      }
      for (int64_t p = sp.window_begin; p < sp.pages; ++p) want.push_back(p);
      const int32_t begin = all[s.indptr_at() + list], end = all[s.indptr_at() + list + 1];
      ASSERT_EQ(end - begin, int32_t(want.size())) << "step " << t << " list " << list;
      for (int32_t i = 0; i < end - begin; ++i) {
        const int32_t page = all[s.indices_at() + begin + i];
        const bool last = i + 1 == end - begin;
        const int32_t tokens = last ? all[s.last_len_at() + list] : kPage;
        for (int32_t h = 0; h < kHeads; ++h) {
          if (per_head && h != list % kHeads) continue;
          ExpectPage(Const(), page, tokens, b, want[i], h,
                     absl::StrCat("step ", t, " list ", list, " entry ", i));
        }
      }
    }
  }

  PagePlanShape shape_;
  int32_t batch_ = 0;
  std::vector<BFloat16> pool_data_;
  kernels::PagedKv<BFloat16> pool_;
  std::vector<int32_t> resident_;
  std::map<std::pair<int32_t, int32_t>, std::vector<BFloat16>> store_;
  std::mt19937 rng_{11};
};

TEST_P(PagePlanReplay, EveryStepReadsTheRightTokens) {
  const Case& c = GetParam();
  for (int32_t b = 0; b < batch_; ++b) {
    Prefill(b, c.prompts[b]);
    if (HasFailure()) return;
  }
  for (int32_t t = 0; t < c.steps; ++t) {
    Step(t);
    if (HasFailure()) return;  // the first step that went wrong says the most
  }
  // Every full page past the sinks reached the store once, whatever the policy.
  if (!c.sparse) return;
  for (int32_t b = 0; b < batch_; ++b) {
    for (int64_t p = c.layout.sink; p < (c.prompts[b] + c.steps) / kPage; ++p) {
      EXPECT_TRUE(store_.count({b, int32_t(p)})) << "sequence " << b << " page " << p;
    }
  }
}

// Prompts shorter than a sink page, within the budget, and far past it, so that
// promotions, fills and recalls of different sequences fall on the same steps.
const std::vector<int64_t> kPrompts = {3, 9, 17, 37, 22};

INSTANTIATE_TEST_SUITE_P(
    Layouts, PagePlanReplay,
    ::testing::Values(Case{"whole_budget_in_slots", {1, 16, 2}, true, false, kPrompts, 28},
                      Case{"small_budget", {1, 2, 2}, true, false, kPrompts, 28},
                      Case{"two_sinks", {2, 3, 3}, true, false, {5, 8, 23, 40}, 30},
                      Case{"window_only", {1, 1, 13}, true, false, kPrompts, 14},
                      Case{"oracle_over_full", {1, 2, 2}, true, true, kPrompts, 28},
                      // A resident cache: slots by position while the candidates fit
                      // all 5 (or 4), then recalls evict beyond them.
                      Case{"small_budget_cached", {1, 2, 2, 3}, true, false, kPrompts, 28},
                      Case{"two_sinks_cached", {2, 3, 3, 1}, true, false, {5, 8, 23, 40}, 30},
                      Case{"full", {1, 2, 2}, false, false, kPrompts, 28}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

TEST(StepJobs, PartsLieWhereTheAccessorsSay) {
  PagePlanShape shape;
  shape.page_tokens = 4;
  shape.num_kv_heads = 2;
  shape.layout = {1, 4, 2};
  // Sequence 0 starts page 3 (page 1 leaves the window: promoted into slot 0);
  // sequence 1 completes page 5; sequence 2 does neither.
  const StepJobs j = StepJobs::Plan(shape, std::vector<int64_t>{12, 23, 9});
  const int32_t pps = shape.layout.pages_per_seq();
  EXPECT_EQ(j.promotions(), 1);
  EXPECT_EQ(j.resident_writes(), 2);
  EXPECT_EQ(j.fills(), 1);
  const auto flat = j.flat();
  EXPECT_EQ(flat[j.promote_src_at()], shape.layout.window_page(0, 1));
  EXPECT_EQ(flat[j.promote_dst_at()], shape.layout.selected_page(0, 0));
  EXPECT_EQ(flat[j.resident_index_at() + 1], 1 * shape.layout.selected + 0);  // head 1
  EXPECT_EQ(flat[j.resident_page_at() + 1], 1);
  EXPECT_EQ(flat[j.fill_pool_at()], pps + 1 + 4 + 5 % 2);
  EXPECT_EQ(flat[j.fill_seq_at()], 1);
  EXPECT_EQ(flat[j.fill_logical_at()], 5);
  EXPECT_EQ(j.filled(), (std::vector<std::pair<int32_t, int64_t>>{{1, 5}}));
  EXPECT_EQ(flat.size(), j.fill_logical_at() + 1);
}

}  // namespace
}  // namespace freekv::gpu
