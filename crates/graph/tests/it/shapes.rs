//! Shape inference properties: random valid shapes give the documented output shapes, random
//! invalid ones give errors naming the op — never a panic.

use graph::{AttnMask, AttnParams, DType, GraphBuilder, KvLayout, RopeParams, Shape};
use proptest::prelude::*;

fn shape(dims: &[usize]) -> Shape {
    Shape::new(dims).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matmul_shapes(k in 1usize..64, n in 1usize..64, m in 1usize..8, b in 1usize..4, k2 in 1usize..64) {
        let mut g = GraphBuilder::new();
        let w = g.weight("w", DType::F32, shape(&[k, n])).unwrap();
        let x = g.input("x", DType::F32, shape(&[k2, m, b])).unwrap();
        match g.matmul(w, x) {
            Ok(y) => {
                prop_assert_eq!(k, k2);
                prop_assert_eq!(g.shape(y).unwrap(), shape(&[n, m, b]));
            }
            Err(e) => {
                prop_assert_ne!(k, k2);
                prop_assert!(e.to_string().starts_with("matmul: "), "{}", e);
            }
        }
    }

    #[test]
    fn binary_broadcast_shapes(a in prop::array::uniform4(1usize..5), mask in prop::array::uniform4(any::<bool>()), bump in prop::array::uniform4(0usize..2)) {
        // b keeps a dim, sets it to 1, or (bump) makes it differ.
        let b: Vec<usize> = (0..4).map(|i| if mask[i] { 1 } else { a[i] + bump[i] }).collect();
        let ok = (0..4).all(|i| b[i] == a[i] || b[i] == 1);
        let mut g = GraphBuilder::new();
        let x = g.input("a", DType::F32, shape(&a)).unwrap();
        let y = g.input("b", DType::F32, shape(&b)).unwrap();
        match g.add(x, y) {
            Ok(z) => { prop_assert!(ok); prop_assert_eq!(g.shape(z).unwrap(), shape(&a)); }
            Err(e) => { prop_assert!(!ok); prop_assert!(e.to_string().contains("does not broadcast"), "{}", e); }
        }
    }

    #[test]
    fn attention_shapes(d in 1usize..80, n_head in 1usize..9, n_head_kv in 1usize..9, t in 1usize..17, cap in 1usize..64, d_k in 1usize..80) {
        let mut g = GraphBuilder::new();
        let q = g.input("q", DType::F32, shape(&[d, n_head, t])).unwrap();
        let k = g.state("k", DType::F16, shape(&[d_k, n_head_kv, cap])).unwrap();
        let v = g.state("v", DType::F32, shape(&[d_k, n_head_kv, cap])).unwrap();
        let p = g.input("p", DType::I32, shape(&[t])).unwrap();
        let n = g.input("n", DType::I32, shape(&[1])).unwrap();
        let params = AttnParams { scale: 1.0, mask: AttnMask::Causal, kv_layout: KvLayout::Ring };
        let ok = d == d_k && n_head % n_head_kv == 0;
        match g.attention(q, k, v, p, n, None, params) {
            Ok(y) => { prop_assert!(ok); prop_assert_eq!(g.shape(y).unwrap(), shape(&[d_k, n_head, t])); }
            Err(e) => { prop_assert!(!ok); prop_assert!(e.to_string().starts_with("attention: "), "{}", e); }
        }
    }

    #[test]
    fn rope_and_view_shapes(n_dims in 1usize..64, n_rot in 0usize..70, heads in 1usize..4, t in 1usize..5, t_pos in 1usize..5) {
        let mut g = GraphBuilder::new();
        let x = g.input("x", DType::F32, shape(&[n_dims, heads, t])).unwrap();
        let p = g.input("p", DType::I32, shape(&[t_pos])).unwrap();
        let ok = n_rot > 0 && n_rot % 2 == 0 && n_rot <= n_dims && t == t_pos;
        match g.rope(x, p, RopeParams { theta: 1e4, n_rot }, None) {
            Ok(y) => { prop_assert!(ok); prop_assert_eq!(g.shape(y).unwrap(), shape(&[n_dims, heads, t])); }
            Err(e) => { prop_assert!(!ok); prop_assert!(e.to_string().starts_with("rope: "), "{}", e); }
        }
        // A view reaching past the buffer is an error, one inside it is not.
        let n = n_dims * heads * t;
        let inside = g.view(x, shape(&[n_dims]), [1, 1, 1, 1], n - n_dims);
        prop_assert!(inside.is_ok());
        let outside = g.view(x, shape(&[n_dims]), [1, 1, 1, 1], n - n_dims + 1);
        prop_assert!(outside.is_err());
    }

    #[test]
    fn reshape_concat_topk_shapes(a in 1usize..8, b in 1usize..8, c in 1usize..8, k in 0usize..10) {
        let mut g = GraphBuilder::new();
        let x = g.input("x", DType::F32, shape(&[a, b, c])).unwrap();
        let r = g.reshape(x, shape(&[a * b, c])).unwrap();
        prop_assert_eq!(g.shape(r).unwrap(), shape(&[a * b, c]));
        prop_assert!(g.reshape(x, shape(&[a * b + 1, c])).is_err());
        let y = g.concat(x, x, 2).unwrap();
        prop_assert_eq!(g.shape(y).unwrap(), shape(&[a, b, 2 * c]));
        match g.top_k(x, k) {
            Ok(t) => { prop_assert!(k >= 1 && k <= a); prop_assert_eq!(g.shape(t).unwrap(), shape(&[k, b, c])); prop_assert_eq!(g.dtype(t).unwrap(), DType::I32); }
            Err(_) => prop_assert!(k == 0 || k > a),
        }
        let am = g.argmax(x).unwrap();
        prop_assert_eq!(g.shape(am).unwrap(), shape(&[b, c]));
    }
}

#[test]
fn errors_name_the_op_and_shapes() {
    let mut g = GraphBuilder::new();
    let w = g.weight("w", DType::Q4_K, shape(&[256, 8])).unwrap();
    let x = g.input("x", DType::F32, shape(&[128, 2])).unwrap();
    let err = g.matmul(w, x).unwrap_err();
    assert_eq!(
        err.to_string(),
        "matmul: weight [256, 8] and input [128, 2] differ in dim 0"
    );
    let err = g.weight("bad", DType::Q4_K, shape(&[100])).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a multiple of the Q4_K block size 256"),
        "{err}"
    );
    let ids = g.input("ids", DType::F32, shape(&[2])).unwrap();
    let err = g.get_rows(w, ids).unwrap_err();
    assert_eq!(
        err.to_string(),
        "get_rows: input 1 has dtype F32, expected I32"
    );
    assert!(Shape::new(&[1, 2, 3, 4, 5]).is_err());
}
