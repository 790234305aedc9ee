// vitzoo_classify_aoti MODEL.pt2 IMAGE... : top-5 classes of images with an AOTInductor package from `vitzoo export`
// (libtorch, no Python).
#include <memory>

#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "classify.hpp"

int main(int argc, char** argv) {
    return vitzoo::run_classifier(argc, argv, "pt2", "MODEL.pt2", [](const vitzoo::Sidecar& s,
                                                                     const vitzoo::Options& o) {
        // the package's kernels parallelize with libtorch's OpenMP pool
        if (o.threads > 0) at::set_num_threads(o.threads);
        auto loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(o.model);
        const int64_t classes = int64_t(s.classes.size()), side = s.size;
        return vitzoo::Infer([=](const float* images, int n, float* logits) {
            c10::InferenceMode no_autograd;
            // the caller's buffer as a tensor, no copy; every package takes and gives float32 (bf16 ones convert)
            at::Tensor x = at::from_blob(const_cast<float*>(images), {n, 3, side, side}, at::kFloat);
            at::Tensor out = loader->run({x})[0].to(at::kFloat).contiguous();
            TORCH_CHECK(out.numel() == n * classes, "the package answered ", out.sizes(), " logits");
            std::copy_n(out.data_ptr<float>(), n * classes, logits);
        });
    });
}
