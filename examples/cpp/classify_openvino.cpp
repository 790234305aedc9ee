// vitzoo_classify_openvino MODEL.xml IMAGE... : top-5 classes of images with an OpenVINO IR from `vitzoo export`.
#include <algorithm>
#include <map>
#include <memory>

#include <openvino/openvino.hpp>

#include "classify.hpp"

int main(int argc, char** argv) {
    return vitzoo::run_classifier(argc, argv, "openvino", "MODEL.xml", [](const vitzoo::Sidecar& s,
                                                                          const vitzoo::Options& o) {
        auto core = std::make_shared<ov::Core>();
        std::shared_ptr<ov::Model> model = core->read_model(o.model);
        // As vitzoo's Python runner: fp32 and fp16 files compute in f32 (OpenVINO's CPU default is bf16 wherever
        // the CPU has it); int8 leaves its float parts (LayerNorm, Softmax, GELU) to bf16 where the CPU computes
        // bf16 natively, which is faster at no measurable cost.
        auto caps = core->get_property("CPU", ov::device::capabilities);
        bool native_bf16 = std::find(caps.begin(), caps.end(), ov::device::capability::BF16) != caps.end();
        ov::AnyMap config{
            ov::hint::inference_precision(s.precision == "int8" && native_bf16 ? ov::element::bf16 : ov::element::f32),
            // one stream with every thread on the one request: what a single batch needs
            ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
        if (o.threads > 0) config.emplace(ov::inference_num_threads(o.threads));
        // TBB's auto partitioner splits each node's work adaptively: faster at batch 1, where nodes are small
        ov::AnyMap batch1_config = config;
        auto supported = core->get_property("CPU", ov::supported_properties);
        if (std::find(supported.begin(), supported.end(), "TBB_PARTITIONER") != supported.end())
            batch1_config.emplace("TBB_PARTITIONER", "AUTO");

        // One static-shape compile per batch size, made on first use: a dynamic-batch compile ran slower at batch 1.
        auto requests = std::make_shared<std::map<int, ov::InferRequest>>();
        const size_t classes = s.classes.size();
        const size_t side = s.size;
        return vitzoo::Infer([=](const float* images, int n, float* logits) {
            auto found = requests->find(n);
            if (found == requests->end()) {
                std::shared_ptr<ov::Model> shaped = model->clone();
                shaped->reshape(ov::PartialShape{n, 3, int64_t(side), int64_t(side)});
                auto compiled = core->compile_model(shaped, "CPU", n == 1 ? batch1_config : config);
                found = requests->emplace(n, compiled.create_infer_request()).first;
            }
            ov::InferRequest& request = found->second;
            // the caller's buffer as the input tensor, no copy
            request.set_input_tensor(ov::Tensor(ov::element::f32, ov::Shape{size_t(n), 3, side, side},
                                                const_cast<float*>(images)));
            request.infer();
            const ov::Tensor out = request.get_output_tensor();
            if (out.get_size() != n * classes)
                throw std::runtime_error("the model answered " + out.get_shape().to_string() + " logits");
            std::copy_n(out.data<const float>(), n * classes, logits);
        });
    });
}
